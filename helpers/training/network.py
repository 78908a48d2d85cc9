"""Adapter training (LoRA and LyCORIS: LoCon, LoHa, LoKr, DoRA) through lycoris-lora: config, attach, save.

``NetworkConfig`` is the ``[network]`` section of a training config (absent or ``algo = "none"``: a full
fine-tune, unchanged). ``attach_network(bundle, cfg)`` freezes the base model, wraps the targeted layers with
lycoris modules and returns an ``AdapterNetwork``: its parameters are what trains, its ``save`` writes a
kohya/LyCORIS file in the original-model layout (``helpers.lora.naming``) that A1111, ComfyUI, diffusers and
``python -m helpers.lora`` read.

Targets are chosen here (the preset's module classes, 3x3 convs only with a conv rank, ``module_rules``);
layers with equal settings go to one ``lycoris.LycorisNetwork`` built over a flat container of just those
layers, so lycoris' own target logic never runs on the whole model. That side-steps the lycoris 4.1.3 traps
(each has a test in tests/test_training_network.py that fails once lycoris fixes it):

- the kohya network's built-in ``full``/``full-lin`` presets crash on diffusers U-Nets (duplicate
  ``time_embedding`` names); its ``attn-mlp`` also pulls in the time/add embeddings;
- it names text-encoder-1 layers without ``text_model_`` under transformers >= 5.6: files are written here
  with ``helpers.lora.naming`` names (``lora_te1_text_model_...``, SGM U-Net names for SDXL);
- its merge skips the SDXL U-Net (``lycoris.utils.merge``) and applies alpha/dim twice for LoKr/LoHa
  (``get_merged_weight``): merging is ``helpers.lora``'s, which applies it once, as training did;
- fp32 adapter weights meet fp16/bf16 activations uncast in some paths (``network_runtime.in_input_precision``);
- bypass mode silently ignores DoRA's magnitude: DoRA (and ``full``) rebuild the weight instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from helpers.config import option
from helpers.training.network_runtime import in_input_precision, quantize_linears, step_random_state  # noqa: F401

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
        "none", help="none = full fine-tune; lora / locon (low rank; LoCon = on the convs too: preset "
        "full-unet), loha (Hadamard), lokr (Kronecker), full (a full delta of the targeted layers)")
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
    base_int8: bool = option(False, help="keep the frozen U-Net linears in 8 bits (bitsandbytes LLM.int8(); "
                             "about half the memory of bf16 for those layers)", group="advanced")
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
        if self.algo == "locon" and self.preset != "full-unet":
            out["preset"] = ("algo locon is LoRA on the ResNet convs too: use preset = 'full-unet' (with conv_dim), "
                             "or algo = 'lora'")
        if self.dropout and self.algo in ("loha", "lokr"):
            out["dropout"] = (f"lycoris' {self.algo} has no output dropout (it would be ignored): use rank_dropout "
                              "or module_dropout, or 0 here")
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


def check_base_model(cfg: NetworkConfig, source: str, allow_pickle: bool = False) -> None:
    """Before any model loads: the network's problems against the base model's family, read from its header
    (a LoRA of another architecture to continue from is refused here). Raises ``ConfigError``."""
    from helpers.config import ConfigError

    if not cfg.enabled:
        return
    arch = None
    if Path(source).exists():
        from helpers.models import open_checkpoint

        try:
            arch = open_checkpoint(source, allow_pickle=allow_pickle).arch
        except Exception:  # noqa: BLE001  the loader reports an unreadable model in its own words
            arch = None
    problems = cfg.problems(arch)
    if problems:
        raise ConfigError({f"network.{k}": v for k, v in problems.items()})


# ---------------------------------------------------------------- targets

# module classes whose Linear / Conv2d layers each preset adapts (diffusers U-Net, transformers CLIP)
PRESET_CLASSES = {
    "attn-only": {"unet": ("Attention",), "te": ("CLIPAttention", "CLIPSdpaAttention")},
    "attn-mlp": {"unet": ("Transformer2DModel",), "te": ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")},
    "full-unet": {"unet": ("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"),
                  "te": ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")},
}


@dataclass(frozen=True)
class LayerSettings:
    """What one adapted layer gets; layers with equal settings share one ``LycorisNetwork``."""

    algo: str
    dim: int
    alpha: float
    factor: int


def is_conv3x3(module) -> bool:
    return isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) != (1, 1)


def find_targets(model, component: str, cfg: NetworkConfig) -> dict[str, tuple]:
    """``{module path: (module, LayerSettings)}``: the Linear / Conv2d layers inside the preset's module classes
    (3x3 convs only with a conv rank), with ``module_rules`` applied (later rules win)."""
    classes = PRESET_CLASSES[cfg.preset]["unet" if component == "unet" else "te"]
    by_path = dict(model.named_modules())
    out: dict[str, tuple] = {}
    for parent_path, parent in by_path.items():
        if type(parent).__name__ not in classes:
            continue
        for child_path, child in parent.named_modules():
            path = f"{parent_path}.{child_path}".strip(".")
            if path in out or not isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            settings = layer_settings(cfg, component, path, child, by_path)
            if settings is not None:
                out[path] = (child, settings)
    return out


def layer_settings(cfg: NetworkConfig, component: str, path: str, module, by_path: dict) -> LayerSettings | None:
    conv = is_conv3x3(module)
    algo, factor = cfg.algo, cfg.factor
    dim, alpha = (cfg.conv_dim, cfg.conv_alpha or cfg.conv_dim) if conv else (cfg.dim, cfg.alpha or cfg.dim)
    parts = path.split(".")
    ancestors = {type(by_path[".".join(parts[:i])]).__name__ for i in range(len(parts) + 1)}
    for rule in cfg.module_rules:
        if rule.match in ancestors or rule.match in f"{component}.{path}":
            algo = rule.algo or algo
            dim = rule.dim or dim
            alpha = rule.alpha or alpha
            factor = rule.factor or factor
    if dim <= 0:
        return None
    return LayerSettings(algo, dim, float(alpha), factor)


# ---------------------------------------------------------------- attaching


def _lycoris_network(container, settings: LayerSettings, cfg: NetworkConfig, prefix: str, bypass: bool):
    """One ``lycoris.LycorisNetwork`` over the layers registered in ``container`` (flat, named by their
    underscored paths), all with ``settings``. lycoris keeps its target lists as class attributes (global
    state): they are set for this call and put back after."""
    import logging

    from lycoris import LycorisNetwork
    from lycoris.logging import logger

    saved = {k: getattr(LycorisNetwork, k) for k in ("ENABLE_CONV", "TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME",
                                                     "LORA_PREFIX", "MODULE_ALGO_MAP", "NAME_ALGO_MAP",
                                                     "USE_FNMATCH", "TARGET_EXCLUDE_NAME")}
    level = logger.level
    try:
        logger.setLevel(logging.ERROR)
        classes = sorted({type(m).__name__ for m in container.children()})  # Linear, Conv2d, Linear8bitLt
        LycorisNetwork.apply_preset({"enable_conv": True, "target_module": classes, "target_name": [],
                                     "module_algo_map": {}, "name_algo_map": {}, "lora_prefix": prefix,
                                     "use_fnmatch": False, "exclude_name": []})
        algo = "lora" if settings.algo == "locon" else settings.algo
        return LycorisNetwork(container, multiplier=1.0, lora_dim=settings.dim, conv_lora_dim=settings.dim,
                              alpha=settings.alpha, conv_alpha=settings.alpha, dropout=cfg.dropout,
                              rank_dropout=cfg.rank_dropout, module_dropout=cfg.module_dropout,
                              network_module=algo, factor=settings.factor, full_matrix=cfg.full_matrix,
                              decompose_both=cfg.decompose_both, weight_decompose=cfg.dora,
                              bypass_mode=bypass, warn_on_unmatched=False)
    finally:
        for key, value in saved.items():
            setattr(LycorisNetwork, key, value)
        logger.setLevel(level)


class AdaptedModel(torch.nn.Module):
    """A frozen base model (U-Net or text encoder) with its adapter: called like the base model; its
    parameters and ``state_dict`` are the adapter's alone, so the trainer's optimizer, EMA, DDP and training
    state see only what trains."""

    def __init__(self, base: torch.nn.Module, networks: list):
        super().__init__()
        self.networks = torch.nn.ModuleList(networks)
        object.__setattr__(self, "base", base)  # not a submodule: not in parameters() or state_dict()

    def forward(self, *args, **kwargs):
        return self.base(*args, **kwargs)

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def config(self):
        return self.base.config

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The raw trained tensors (lycoris' own ``state_dict`` folds scalars in: right for files, but a resume
        must get back exactly what was trained)."""
        return {name: p.detach() for name, p in self.named_parameters()}

    def load_state_dict(self, weights: dict[str, torch.Tensor], strict: bool = True):
        own = dict(self.named_parameters())
        if set(own) != set(weights):
            missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
            raise ValueError(f"adapter weights do not match this network (missing {missing[:3]}, unexpected "
                             f"{extra[:3]}): the state was saved with other [network] settings")
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(weights[name])


class AdapterNetwork:
    """The lycoris modules attached to a model bundle, per component, with the names they are saved under."""

    def __init__(self, bundle, cfg: NetworkConfig, models: dict[str, AdaptedModel], layers: dict[str, list]):
        self.bundle, self.cfg, self.models = bundle, cfg, models
        self.layers = layers  # component -> [(module path, lycoris module)]
        self.base_lr = 0.0  # the optimizer's learning rate, for the file's ss_*_lr (set by adapter_models)

    def learning_rates(self, base_lr: float) -> dict[str, float]:
        unet = self.cfg.unet_lr or base_lr
        return {name: unet if name == "unet" else (self.cfg.text_encoder_lr or unet) for name in self.models}

    def param_groups(self, base_lr: float) -> list[dict]:
        """One optimizer group per adapted model (``unet``, ``te1``, ``te2``) with its learning rate."""
        lrs = self.learning_rates(base_lr)
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lrs[name], "name": name}
                for name, model in self.models.items()]

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for model in self.models.values() for p in model.parameters() if p.requires_grad)

    def file_tensors(self, precision: str = "fp32") -> dict[str, torch.Tensor]:
        """kohya/LyCORIS tensors: ``<sd-scripts layer name>.<lycoris suffix>`` (``helpers.lora.naming``)."""
        from helpers.lora import naming
        from helpers.lora.formats import PRECISIONS

        out = {}
        for component, layers in self.layers.items():
            for path, module in layers:
                name = naming.lora_name(component, path, self.bundle.arch)
                tensors = module.custom_state_dict() or torch.nn.Module.state_dict(module)
                for suffix, tensor in tensors.items():
                    out[f"{name}.{suffix}"] = tensor.detach().to("cpu", PRECISIONS[precision]).contiguous()
        return out

    def metadata(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        from helpers.lora.formats import kohya_metadata

        c = self.cfg
        args = {"algo": c.algo, "preset": c.preset, "conv_dim": c.conv_dim, "conv_alpha": c.conv_alpha,
                "dropout": c.dropout, "rank_dropout": c.rank_dropout, "module_dropout": c.module_dropout}
        if c.algo == "lokr":
            args.update(factor=c.factor, full_matrix=c.full_matrix, decompose_both=c.decompose_both)
        if c.dora:
            args["dora_wd"] = True
        if c.module_rules:
            args["module_rules"] = [vars(r) for r in c.module_rules]
        plain = c.algo in ("lora", "locon") and not c.dora
        meta = kohya_metadata(self.bundle.arch, self.bundle.prediction, c.dim, c.alpha, args,
                              title=(extra or {}).get("tunebook.run", "adapter"),
                              extra={"ss_network_module": "networks.lora" if plain else "lycoris.kohya",
                                     "ss_unet_lr": str(self.learning_rates(self.base_lr)["unet"]),
                                     "ss_text_encoder_lr": str(self.learning_rates(self.base_lr).get("te1", 0.0)),
                                     "ss_train_text_encoder": str(c.train_text_encoder)})
        meta.update(extra or {})
        return meta

    def save(self, path: str | Path, metadata: dict[str, str] | None = None, precision: str | None = None) -> Path:
        """Write the adapter as a kohya/LyCORIS safetensors file (atomic, ``ss_*`` metadata and hashes)."""
        from helpers.lora.formats import write_lora

        return write_lora(path, self.file_tensors(precision or self.cfg.save_precision), self.metadata(metadata))

    def load_file(self, path: str | Path) -> int:
        """Continue from a LoRA/LyCORIS file: every layer it holds must be one this network adapts, with the
        same algorithm, shapes and alpha. Returns the number of layers loaded."""
        from helpers.config import ConfigError
        from helpers.lora import naming
        from helpers.lora.formats import LoraFileError, read_lora

        def refuse(message: str, key: str = "init_weights"):
            raise ConfigError({f"network.{key}": f"{path}: {message}"})

        try:
            lora = read_lora(path)
        except LoraFileError as exc:
            refuse(str(exc))
        table = {}
        for component, layers in self.layers.items():
            for module_path, module in layers:
                for alias in [naming.lora_name(component, module_path, self.bundle.arch),
                              *naming.alternative_names(component, module_path, self.bundle.arch)]:
                    table.setdefault(alias, module)
        unknown = [name for name in lora.modules if name not in table]
        if unknown:
            refuse(f"{len(unknown)} of its {len(lora.modules)} layers are not adapted by this network (e.g. "
                   f"{', '.join(unknown[:3])}): set network.preset / train_text_encoder / conv_dim as the file was "
                   "trained", "init_weights")
        with torch.no_grad():
            for name, layer in lora.modules.items():
                module = table[name]
                own = {**dict(module.named_parameters()), **{k: b for k, b in module.named_buffers() if k == "alpha"}}
                tensors = dict(layer.tensors)
                if set(own) - {"scalar"} != set(tensors):
                    refuse(f"layer {name} holds {sorted(tensors)}, this network's has {sorted(own)}: set "
                           f"network.algo (and dora) to what the file was trained with", "algo")
                for key, tensor in tensors.items():
                    if key == "alpha" and abs(float(tensor) - float(own[key])) > 1e-3 * max(1.0, float(own[key])):
                        refuse(f"layer {name} has alpha {float(tensor):g}, this network {float(own[key]):g}: set "
                               f"network.alpha (conv_alpha for 3x3 convs) to {float(tensor):g}", "alpha")
                    if tuple(tensor.shape) != tuple(own[key].shape):
                        refuse(f"layer {name}: {key} is {tuple(tensor.shape)}, this network's "
                               f"{tuple(own[key].shape)}: set network.dim / conv_dim / factor as the file was "
                               "trained", "dim")
                for key, tensor in tensors.items():
                    own[key].copy_(tensor.to(own[key].dtype))
        return len(lora.modules)


def attach_network(bundle, cfg: NetworkConfig) -> AdapterNetwork:
    """Freeze ``bundle`` (a ``helpers.models.loader.ModelBundle``), wrap its targeted layers with lycoris
    modules (the text encoders' too when ``train_text_encoder``), load ``init_weights`` when given, set
    ``bundle.adapter`` and return the network. Call it on the fp32 base, before casting (DoRA reads norms)."""
    from helpers.config import ConfigError

    problems = cfg.problems(bundle.arch)
    if not cfg.enabled:
        problems["algo"] = "is 'none' (a full fine-tune): choose lora, locon, loha, lokr or full"
    if problems:
        raise ConfigError({f"network.{k}": v for k, v in problems.items()})
    for model in [bundle.unet, bundle.vae, *bundle.text_encoders]:
        model.requires_grad_(False)
    components = {"unet": bundle.unet}
    if cfg.train_text_encoder:
        components.update({f"te{i + 1}": te for i, te in enumerate(bundle.text_encoders)})
    models, layers = {}, {}
    # bypass: base(x) + adapter(x), the base weight never rebuilt (stays in its half precision); lycoris'
    # bypass path ignores DoRA's magnitude, and its full-delta module has none: those rebuild the weight
    bypass = not cfg.dora and cfg.algo != "full"
    for component, model in components.items():
        targets = find_targets(model, component, cfg)
        check_factors(targets, component)
        groups: dict[LayerSettings, torch.nn.Module] = {}
        for path, (module, settings) in targets.items():
            groups.setdefault(settings, torch.nn.Module()).add_module(path.replace(".", "_"), module)
        networks = [_lycoris_network(container, settings, cfg, f"lora_{component}", bypass)
                    for settings, container in groups.items()]
        by_module = {id(module): path for path, (module, _) in targets.items()}
        order = {path: i for i, path in enumerate(targets)}
        layers[component] = sorted(((by_module[id(lora.org_module[0])], lora) for net in networks
                                    for lora in net.loras), key=lambda pair: order[pair[0]])
        for net in networks:
            net.apply_to()
            for lora in net.loras:
                lora.org_module[0].forward = in_input_precision(lora.forward)
        models[component] = AdaptedModel(model, networks)
        # lycoris modules are not children of the base model: they follow its train/eval switch (sampling)
        model.register_forward_pre_hook(_follow_mode(models[component]))
    network = AdapterNetwork(bundle, cfg, models, layers)
    if cfg.init_weights:
        network.load_file(Path(cfg.init_weights).expanduser())
    bundle.adapter = network
    return network


def check_factors(targets: dict[str, tuple], component: str) -> None:
    """A LoKr factor must divide both widths of every layer it splits (``network.factor`` / a rule's)."""
    from helpers.config import ConfigError

    for path, (module, settings) in targets.items():
        if settings.algo != "lokr" or settings.factor <= 0:
            continue
        widths = (module.weight.shape[0], module.weight.shape[1])
        if any(w % settings.factor for w in widths):
            raise ConfigError({"network.factor": f"LoKr factor {settings.factor} does not divide the widths "
                               f"{widths} of {component}.{path}: use a divisor of both (or -1 = automatic, or a "
                               "module_rules entry for these layers)"})


# ---------------------------------------------------------------- training


def adapter_models(bundle, cfg: NetworkConfig, *, base_lr: float, device: torch.device, vae_dtype: torch.dtype,
                   gradient_checkpointing: bool, attention: str):
    """Attach the network and place everything for training: the base frozen in ``base_precision`` (8-bit
    U-Net linears with ``base_int8``), the adapter in fp32 on ``device``. Returns the trainer's
    ``TrainedModels`` (``unet``/``te1``/``te2`` = ``AdaptedModel`` s with the network's learning rates)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from helpers.training import network_runtime as runtime
    from helpers.training.components import DTYPES, TrainedModels, place

    if cfg.base_int8:
        runtime.quantize_linears(bundle.unet, device)
    network = attach_network(bundle, cfg)  # on the fp32 weights (DoRA's magnitudes come from them)
    base_dtype = DTYPES[cfg.base_precision]
    place(bundle.vae, device, vae_dtype).eval()
    bundle.unet.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())
    for model in [bundle.unet, *bundle.text_encoders]:
        if cfg.base_int8 and model is bundle.unet:
            model.to(device)  # moving quantizes the 8-bit layers; everything else follows base_precision
            for module in model.modules():
                if isinstance(module, runtime.QUANTIZED):
                    if module.bias is not None:
                        module.bias.data = module.bias.data.to(base_dtype)
                elif not list(module.children()):
                    module.to(dtype=base_dtype)
        else:
            place(model, device, base_dtype)
        model.train(model is bundle.unet or any(m.base is model for m in network.models.values()))
    if gradient_checkpointing:
        bundle.unet.enable_gradient_checkpointing()
        for name, model in network.models.items():
            if name != "unet":  # non-reentrant: the frozen embeddings give inputs without gradients
                model.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for model in network.models.values():
        model.to(device, torch.float32).train()
    network.base_lr = base_lr
    return TrainedModels(modules=dict(network.models), learning_rates=network.learning_rates(base_lr))


def _follow_mode(model: AdaptedModel):
    def hook(base, args):
        if model.training != base.training:
            model.train(base.training)
    return hook


def learning_rates(cfg: NetworkConfig, unet: float, te1: float | None, te2: float | None):
    """(U-Net, TE1, TE2) base learning rates of a run: the network's when an adapter trains."""
    if not cfg.enabled:
        return unet, te1, te2
    unet = cfg.unet_lr or unet
    te = cfg.text_encoder_lr or unet
    return unet, te, te
