"""Adapter training (LoRA and LyCORIS: LoCon, LoHa, LoKr, DoRA) through lycoris-lora: config, attach, save.

``NetworkConfig`` is the ``[network]`` section of a training config (absent or ``algo = "none"``: a full
fine-tune, unchanged). ``attach_network(bundle, cfg)`` freezes the base model, wraps the targeted layers with
lycoris modules and returns an ``AdapterNetwork``: its parameters are what trains, its ``save`` writes a
kohya/LyCORIS file in the original-model layout (``helpers.lora.naming``) that A1111, ComfyUI, diffusers and
``python -m helpers.lora`` read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from helpers.config import option

ALGOS = ("none", "lora", "locon", "loha", "lokr", "full")
PRESETS = ("attn-only", "attn-mlp", "full-unet")
DORA_ALGOS = ("lora", "locon", "loha", "lokr")  # lycoris' dora_wd (weight decomposition) exists for these
# every layer width of SDXL and SD 1.5 (320, 640, 768, 1280, 2048, 5120, 10240 ...) is a multiple of 64
WIDTH_GCD = 64


@dataclass
class ModuleRule:
    """Settings for some of the targeted layers: those inside a module of a class (``Attention``,
    ``FeedForward``, ``ResnetBlock2D``, ``CLIPMLP`` ...) or whose path contains a text (``attn2``, ``te1``)."""

    match: str = option("", help="a module class name (Attention, FeedForward, ResnetBlock2D, CLIPAttention, "
                        "CLIPMLP ...) or a piece of the layer path (attn2, up_blocks.0, te1.)")
    algo: str = option("", help="algorithm for these layers ('' = the network's)")
    dim: int = option(0, min=0, max=100_000, help="rank for these layers (0 = the network's)")
    alpha: float = option(0.0, min=0.0, max=100_000.0, help="alpha for these layers (0 = the network's)")
    factor: int = option(0, min=-1, max=100_000, help="LoKr factor for these layers (0 = the network's)")


@dataclass
class NetworkConfig:
    """Train an adapter (LoRA / LyCORIS) instead of the whole model."""

    algo: Literal["none", "lora", "locon", "loha", "lokr", "full"] = option(
        "none", help="none = full fine-tune; lora (attention/MLP linears), locon (LoRA + convs), loha, lokr "
        "(Kronecker), full (a full delta of the targeted layers)")
    preset: Literal["attn-only", "attn-mlp", "full-unet"] = option(
        "attn-mlp", help="which layers: attention only; attention + MLP (sd-scripts' LoRA); the whole U-Net "
        "including ResNet convs (needs conv_dim)")
    dim: int = option(32, min=1, max=100_000, help="rank of linear / 1x1 layers (network_dim)")
    alpha: float = option(16.0, min=0.0, max=100_000.0, help="scale = alpha / dim (network_alpha; 0 = dim)")
    conv_dim: int = option(0, min=0, max=100_000, help="rank of 3x3 convs (0 = convs not trained)")
    conv_alpha: float = option(0.0, min=0.0, max=100_000.0, help="alpha of 3x3 convs (0 = conv_dim)")
    dropout: float = option(0.0, min=0.0, max=1.0, help="dropout of the adapter's output", group="advanced")
    rank_dropout: float = option(0.0, min=0.0, max=1.0, help="drop ranks at random each step",
                                 group="advanced")
    module_dropout: float = option(0.0, min=0.0, max=1.0, help="skip whole adapted layers at random each step",
                                   group="advanced")
    factor: int = option(-1, min=-1, max=100_000, help="LoKr: split each width as factor x rest (-1 = as "
                         "square as possible; Kohaku XL: 2-8 per module type)")
    full_matrix: bool = option(False, help="LoKr: train the second Kronecker factor as a full matrix "
                               "(Kohaku XL)", group="advanced")
    decompose_both: bool = option(False, help="LoKr: factorise the first Kronecker factor too",
                                  group="advanced")
    dora: bool = option(False, help="DoRA weight decomposition (a trained per-channel magnitude)")
    train_text_encoder: bool = option(False, help="also adapt the text encoder(s)")
    unet_lr: float = option(0.0, min=0.0, max=1.0, help="U-Net adapter learning rate (0 = optimizer's "
                            "learning_rate)")
    text_encoder_lr: float = option(0.0, min=0.0, max=1.0, help="text-encoder adapter learning rate (0 = the "
                                    "U-Net's)")
    module_rules: list[ModuleRule] = option(factory=list, help="[[network.module_rules]] tables: dim, alpha, "
                                            "factor, algo per module class or path", group="advanced")
    init_weights: str = option("", help="continue from this LoRA/LyCORIS file ('' = start fresh)", kind="path")
    base_precision: Literal["fp32", "fp16", "bf16"] = option(
        "bf16", help="dtype of the frozen base weights (bf16: half the memory of fp32)")
    base_int8: bool = option(False, help="keep the frozen U-Net linears in 8 bits (bitsandbytes, CUDA only)",
                             group="advanced")
    save_precision: Literal["fp16", "bf16", "fp32"] = option("fp16", help="precision of saved adapter files")

    @property
    def enabled(self) -> bool:
        return self.algo != "none"

    def problems(self, arch: str | None = None) -> dict[str, str]:
        """Field problems (keys without the ``network.`` prefix), each with its fix; ``arch`` = the base model's
        family when known. Reads at most the header of ``init_weights``; loads no model."""
        out: dict[str, str] = {}
        if not self.enabled:
            return out
        if self.preset == "full-unet" and self.conv_dim <= 0:
            out["conv_dim"] = "preset full-unet trains the ResNet 3x3 convs: set conv_dim (e.g. 8 or 16)"
        if self.dora and self.algo not in DORA_ALGOS:
            out["dora"] = (f"lycoris has no DoRA for algo {self.algo!r}: use one of {', '.join(DORA_ALGOS)}, "
                           "or turn dora off")
        if self.dora and self.base_int8:
            out["dora"] = "DoRA needs the base weights' norms, which an 8-bit base does not give: turn off base_int8"
        if self.factor == 0 or (self.factor > 0 and WIDTH_GCD % self.factor):
            out["factor"] = factor_problem(self.factor)
        if self.factor != -1 and self.algo != "lokr" and not any(r.algo == "lokr" for r in self.module_rules):
            out["factor"] = f"is a LoKr setting, but algo is {self.algo!r}: set algo = 'lokr' or factor = -1"
        if (self.full_matrix or self.decompose_both) and self.algo != "lokr":
            key = "full_matrix" if self.full_matrix else "decompose_both"
            out[key] = f"is a LoKr setting, but algo is {self.algo!r}: set algo = 'lokr' or turn it off"
        if self.text_encoder_lr and not self.train_text_encoder:
            out["text_encoder_lr"] = "text encoders are not trained: set train_text_encoder = true, or 0 here"
        for i, rule in enumerate(self.module_rules):
            where = f"module_rules[{i}]"
            if not rule.match.strip():
                out[f"{where}.match"] = "name a module class (Attention, FeedForward, ResnetBlock2D ...) or a path piece"
            if rule.algo and rule.algo not in ALGOS[1:]:
                out[f"{where}.algo"] = f"unknown algorithm {rule.algo!r}: use one of {', '.join(ALGOS[1:])} or ''"
            if rule.factor > 0 and WIDTH_GCD % rule.factor:
                out[f"{where}.factor"] = factor_problem(rule.factor)
        if self.init_weights:
            out.update(init_weights_problems(self.init_weights, arch))
        return out


def factor_problem(factor: int) -> str:
    return (f"LoKr factor {factor} does not divide the layer widths of SDXL / SD 1.5 (multiples of "
            f"{WIDTH_GCD}: 320, 768, 1280 ...): use one of 2, 4, 8, 16, 32 (or -1 = automatic)")


def init_weights_problems(path: str, arch: str | None) -> dict[str, str]:
    """Problems of a LoRA to continue from, from its header alone: missing, not a LoRA, another architecture."""
    from helpers.lora.formats import SUFFIXES, LoraFile, LoraModule
    from helpers.models.checkpoint import CheckpointError, read_safetensors_header

    file = Path(path).expanduser()
    if not file.is_file():
        return {"init_weights": f"{file}: no such file: give the path of a .safetensors LoRA/LyCORIS file, or ''"}
    if file.suffix != ".safetensors":
        return {"init_weights": f"{file}: only .safetensors LoRA files can be continued from (pickle files can "
                                "run code): convert it, or start fresh with ''"}
    try:
        entries, metadata = read_safetensors_header(file)
    except CheckpointError as exc:
        return {"init_weights": str(exc)}
    suffixes = sorted({s for group in SUFFIXES.values() for s in group}, key=len, reverse=True)
    names = {key[: -len(s) - 1] for key in entries for s in suffixes if key.endswith("." + s)}
    if not names:
        return {"init_weights": f"{file} holds no LoRA/LyCORIS layers (e.g. {', '.join(list(entries)[:3])}): "
                                "is it a model checkpoint? Give a LoRA file, or ''"}
    found = LoraFile(file, {n: LoraModule(n) for n in names}, metadata, {}).arch
    if arch and found and found != arch:
        return {"init_weights": f"{file} is a {found} LoRA but the base model is {arch}: continue from a LoRA "
                                f"made for {arch}, or start fresh with ''"}
    return {}


class AdapterNetwork:
    """The lycoris modules attached to a model bundle (API; filled in by the next commits)."""

    def param_groups(self, base_lr: float) -> list[dict]:
        raise NotImplementedError

    def trainable_parameter_count(self) -> int:
        raise NotImplementedError

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
        raise NotImplementedError


def attach_network(bundle, cfg: NetworkConfig) -> AdapterNetwork:
    """Freeze ``bundle`` (a ``helpers.models.loader.ModelBundle``), wrap its targeted layers, set
    ``bundle.adapter`` and return the network."""
    raise NotImplementedError
