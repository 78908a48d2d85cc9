"""Which weights a LoRA targets, and their kohya sd-scripts names.

Owns the mapping between a model's modules (diffusers/HF paths as ``helpers.models.Checkpoint`` names them)
and LoRA module names, e.g.

- SDXL U-Net: original-layout paths, ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``;
- SD 1.5 U-Net: diffusers paths, ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``;
- text encoders: ``lora_te1_text_model_encoder_layers_0_self_attn_q_proj`` / ``lora_te2_…`` (SDXL),
  ``lora_te_…`` (SD 1.5) — always with ``text_model_``, which transformers >= 5.6 leaves out of module names.

Targets follow sd-scripts ``networks/lora.py``: Linear and 1x1-conv layers inside the U-Net's transformer
blocks (``Transformer2DModel``), and, when a conv rank is given, every conv/linear layer of the resnets and
down/upsamplers (3x3 convs at the conv rank, 1x1 convs and ``time_emb_proj`` at the linear rank); text
encoders: the attention and MLP projections of every CLIP layer. Reading is lenient: SDXL files with
diffusers-style U-Net names (LyCORIS) and TE names without ``text_model_`` resolve too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from helpers.models import keymap

TE_PREFIX = {("sdxl", "te1"): "lora_te1_", ("sdxl", "te2"): "lora_te2_", ("sd15", "te1"): "lora_te_"}
_TE_TARGET = re.compile(r"^text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")
_UNET_ATTENTION = re.compile(r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+\.")
_UNET_CONV_BLOCK = re.compile(r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(resnets\.\d+|downsamplers\.0|upsamplers\.0)\.")


@dataclass(frozen=True)
class Target:
    """One weight a LoRA can adapt."""

    component: str  # "unet" | "te1" | "te2"
    module: str  # diffusers/HF module path (TE with ``text_model.``)
    shape: tuple[int, ...]  # weight shape as the checkpoint reader returns it
    lora_name: str

    @property
    def weight_key(self) -> str:
        return self.module + ".weight"

    @property
    def is_conv3x3(self) -> bool:
        return len(self.shape) == 4 and tuple(self.shape[2:]) != (1, 1)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(out, in * kh * kw): the matrix a LoRA factorises."""
        n = 1
        for d in self.shape[1:]:
            n *= d
        return self.shape[0], n


def lora_name(component: str, module: str, arch: str) -> str:
    """sd-scripts LoRA module name for a diffusers/HF module path."""
    if component == "unet":
        path = keymap.unet_module_to_original(module, arch) if arch == "sdxl" else module
        return "lora_unet_" + path.replace(".", "_")
    if (arch, component) not in TE_PREFIX:
        raise ValueError(f"{arch} has no component {component!r}")
    if not module.startswith("text_model."):
        module = "text_model." + module
    return TE_PREFIX[(arch, component)] + module.replace(".", "_")


def alternative_names(component: str, module: str, arch: str) -> list[str]:
    """Other names other tools write for the same module (read-side only)."""
    names = []
    if component == "unet" and arch == "sdxl":
        names.append("lora_unet_" + module.replace(".", "_"))  # LyCORIS / diffusers-style SDXL names
    if component == "unet" and arch == "sd15":
        try:
            names.append("lora_unet_" + keymap.unet_module_to_original(module, arch).replace(".", "_"))
        except keymap.UnknownKeyError:
            pass
    if component in ("te1", "te2"):
        bare = module[len("text_model."):] if module.startswith("text_model.") else module
        names.append(TE_PREFIX[(arch, component)] + bare.replace(".", "_"))
        if arch == "sd15":
            names += ["lora_te1_" + module.replace(".", "_"), "lora_te1_" + bare.replace(".", "_")]
    return names


def is_target(component: str, module: str, shape: tuple[int, ...], with_conv: bool) -> bool:
    """Whether sd-scripts' LoRA network would wrap this weight (see module docstring)."""
    if len(shape) not in (2, 4):
        return False
    if component in ("te1", "te2"):
        return bool(_TE_TARGET.match(module))
    if component != "unet":
        return False
    if _UNET_ATTENTION.match(module):
        return len(shape) == 2 or tuple(shape[2:]) == (1, 1)
    return with_conv and bool(_UNET_CONV_BLOCK.match(module))


def list_targets(checkpoint, with_conv: bool, components: tuple[str, ...] = ("unet", "te1", "te2")) -> list[Target]:
    """Every LoRA-able weight of a checkpoint (``helpers.models.Checkpoint``), in file order per component."""
    return [Target(component, module, shape, lora_name(component, module, checkpoint.arch))
            for component, module, shape in iter_weights(checkpoint, components)
            if is_target(component, module, shape, with_conv)]


def iter_weights(checkpoint, components: tuple[str, ...] = ("unet", "te1", "te2")):
    """(component, module path, weight shape) for every ``.weight`` of the components the checkpoint has."""
    for component in components:
        if component not in checkpoint.components():
            continue
        for key in checkpoint.keys(component):
            if key.endswith(".weight"):
                yield component, key[: -len(".weight")], tuple(checkpoint.shape(component, key))


def name_table(checkpoint) -> dict[str, Target]:
    """LoRA name (ours and the alternatives other tools write) -> target, for every 2-D/4-D weight.

    Wider than :func:`list_targets` on purpose: a LyCORIS file may adapt any linear/conv layer.
    """
    table: dict[str, Target] = {}
    for component, module, shape in iter_weights(checkpoint):
        if len(shape) not in (2, 4):
            continue
        try:
            name = lora_name(component, module, checkpoint.arch)
        except keymap.UnknownKeyError:
            continue
        target = Target(component, module, shape, name)
        for alias in [name] + alternative_names(component, module, checkpoint.arch):
            table.setdefault(alias, target)
    return table
