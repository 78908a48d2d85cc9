"""Name mapping between diffusers/transformers names and the original (LDM/SGM) single-file layout.

Owns the pure, string-level conversions for every component of SDXL and SD 1.5 checkpoints:

- U-Net: diffusers ``UNet2DConditionModel`` names <-> ``input_blocks`` / ``middle_block`` / ``output_blocks``
  (works on parameter keys *and* module paths, which the LoRA code needs for kohya-style names);
- VAE: diffusers ``AutoencoderKL`` <-> LDM ``encoder.down.N.block.M`` names;
- TE1 (CLIP-L): HF names <-> the same names under ``conditioner.embedders.0.transformer.`` (SDXL) or
  ``cond_stage_model.transformer.`` (SD 1.5);
- TE2 (OpenCLIP bigG, SDXL only): HF names <-> OpenCLIP names under ``conditioner.embedders.1.model.``
  (q/k/v are one ``in_proj`` tensor there; the tensor-level split/concat lives in ``checkpoint.py``).

Text-encoder names are always the HF names *with* the ``text_model.`` prefix, whatever transformers version
is installed (>= 5.6 drops it from ``CLIPTextModel``'s own state dict; loading code adds/strips it).

Facts from kohya sd-scripts ``library/sdxl_model_util.py`` / ``model_util.py`` (conversion maps) and
diffusers ``loaders/single_file_utils.py`` (the reverse direction). Block numbering is derived from the
topology below (``layers_per_block`` = 2), which the tiny test models keep.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Arch = Literal["sdxl", "sd15"]
Component = Literal["unet", "vae", "te1", "te2"]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TE1_PREFIX = {"sdxl": "conditioner.embedders.0.transformer.", "sd15": "cond_stage_model.transformer."}
TE2_PREFIX = "conditioner.embedders.1.model."


class UnknownKeyError(ValueError):
    """A name that is not part of the component's layout (raised by the mapping functions)."""


@dataclass(frozen=True)
class UnetTopology:
    """Which U-Net levels carry attention; original block numbers follow from it."""

    down_attention: tuple[bool, ...]
    up_attention: tuple[bool, ...]
    layers_per_block: int = 2


UNET_TOPOLOGY: dict[str, UnetTopology] = {
    "sdxl": UnetTopology(down_attention=(False, True, True), up_attention=(True, True, False)),
    "sd15": UnetTopology(down_attention=(True, True, True, False), up_attention=(False, True, True, True)),
}

# resnet inner layers: diffusers name -> original name (sd-scripts make_unet_conversion_map)
_RESNET_TO_ORIGINAL = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                       "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_RESNET_TO_DIFFUSERS = {v: k for k, v in _RESNET_TO_ORIGINAL.items()}
_UNET_TOP_TO_ORIGINAL = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                         "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
                         "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_UNET_TOP_TO_DIFFUSERS = {v: k for k, v in _UNET_TOP_TO_ORIGINAL.items()}


def _topology(arch: str) -> UnetTopology:
    if arch not in UNET_TOPOLOGY:
        raise ValueError(f"arch must be 'sdxl' or 'sd15', got {arch!r}")
    return UNET_TOPOLOGY[arch]


def _split_at(path: str, n: int) -> tuple[list[str], str]:
    """First n dotted segments, and the rest (without its leading dot)."""
    parts = path.split(".")
    return parts[:n], ".".join(parts[n:])


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _map_prefix(path: str, table: dict[str, str]) -> str | None:
    """Replace the longest dotted prefix of path found in table; None when none matches."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in table:
            return _join(table[head], ".".join(parts[n:]))
    return None


def _resnet_inner_to_original(rest: str, path: str) -> str:
    if not rest:
        return ""
    mapped = _map_prefix(rest, _RESNET_TO_ORIGINAL)
    if mapped is None:
        raise UnknownKeyError(f"unknown U-Net resnet layer in {path!r}")
    return mapped


def _resnet_inner_to_diffusers(rest: str, path: str) -> str:
    if not rest:
        return ""
    mapped = _map_prefix(rest, _RESNET_TO_DIFFUSERS)
    if mapped is None:
        raise UnknownKeyError(f"unknown U-Net resnet layer in {path!r}")
    return mapped


def unet_module_to_original(path: str, arch: Arch) -> str:
    """Diffusers U-Net module path or parameter key -> original (LDM/SGM) name, without the file prefix.

    ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`` -> ``input_blocks.4.1.transformer_blocks.0.attn1.to_q``
    (SDXL). Works for any depth: a leaf module, a parameter key, or a block. Source: sd-scripts
    ``sdxl_model_util.make_unet_conversion_map`` (numbering ``input_blocks.{3i+j+1}``, ``output_blocks.{3i+j}``).
    """
    topo = _topology(arch)
    per = topo.layers_per_block + 1  # original blocks per level: the resnets plus the down/upsampler slot
    top = _map_prefix(path, _UNET_TOP_TO_ORIGINAL)
    if top is not None:
        return top
    parts = path.split(".")
    try:
        if parts[0] == "down_blocks":
            (_, i, kind, j), rest = _split_at(path, 4)
            i, j = int(i), int(j)
            levels = len(topo.down_attention)
            valid = i < levels and (j < topo.layers_per_block if kind != "downsamplers" else i < levels - 1)
            if not valid or (kind == "attentions" and not topo.down_attention[i]):
                raise UnknownKeyError(f"not a diffusers U-Net name for {arch}: {path!r}")
            if kind == "resnets":
                return _join(f"input_blocks.{per * i + j + 1}.0", _resnet_inner_to_original(rest, path))
            if kind == "attentions":
                return _join(f"input_blocks.{per * i + j + 1}.1", rest)
            if kind == "downsamplers" and j == 0:
                inner = {"conv": "op"}.get(rest.split(".")[0]) if rest else ""
                if inner is None:
                    raise UnknownKeyError(f"unknown U-Net downsampler layer in {path!r}")
                return _join(f"input_blocks.{per * (i + 1)}.0", inner, ".".join(rest.split(".")[1:]))
        elif parts[0] == "up_blocks":
            (_, i, kind, j), rest = _split_at(path, 4)
            i, j = int(i), int(j)
            levels = len(topo.up_attention)
            valid = i < levels and (j < per if kind != "upsamplers" else i < levels - 1)
            if not valid or (kind == "attentions" and not topo.up_attention[i]):
                raise UnknownKeyError(f"not a diffusers U-Net name for {arch}: {path!r}")
            if kind == "resnets":
                return _join(f"output_blocks.{per * i + j}.0", _resnet_inner_to_original(rest, path))
            if kind == "attentions":
                return _join(f"output_blocks.{per * i + j}.1", rest)
            if kind == "upsamplers" and j == 0:
                slot = 2 if topo.up_attention[i] else 1
                return _join(f"output_blocks.{per * i + per - 1}.{slot}", rest)
        elif parts[0] == "mid_block":
            (_, kind, j), rest = _split_at(path, 3)
            j = int(j)
            if kind == "resnets" and j in (0, 1):
                return _join(f"middle_block.{2 * j}", _resnet_inner_to_original(rest, path))
            if kind == "attentions" and j == 0:
                return _join("middle_block.1", rest)
    except (ValueError, IndexError) as exc:
        if isinstance(exc, UnknownKeyError):
            raise
        raise UnknownKeyError(f"not a diffusers U-Net name for {arch}: {path!r}") from None
    raise UnknownKeyError(f"not a diffusers U-Net name for {arch}: {path!r}")


def unet_module_to_diffusers(path: str, arch: Arch) -> str:
    """Original U-Net name (no ``model.diffusion_model.`` prefix) -> diffusers module path or key.

    Inverse of :func:`unet_module_to_original`.
    """
    topo = _topology(arch)
    per = topo.layers_per_block + 1
    top = _map_prefix(path, _UNET_TOP_TO_DIFFUSERS)
    if top is not None:
        return top
    parts = path.split(".")
    try:
        if parts[0] == "input_blocks":
            (_, n, slot), rest = _split_at(path, 3)
            n, slot = int(n), int(slot)
            i, j = divmod(n - 1, per)
            if n >= 1 and j < topo.layers_per_block and i < len(topo.down_attention):
                if slot == 0:
                    return _join(f"down_blocks.{i}.resnets.{j}", _resnet_inner_to_diffusers(rest, path))
                if slot == 1 and topo.down_attention[i]:
                    return _join(f"down_blocks.{i}.attentions.{j}", rest)
            elif n >= 1 and j == per - 1 and slot == 0 and i < len(topo.down_attention) - 1:
                head, tail = (rest.split(".", 1) + [""])[:2] if rest else ("", "")
                if head in ("op", ""):
                    return _join(f"down_blocks.{i}.downsamplers.0", "conv" if head else "", tail)
        elif parts[0] == "output_blocks":
            (_, n, slot), rest = _split_at(path, 3)
            n, slot = int(n), int(slot)
            i, j = divmod(n, per)
            has_attn = i < len(topo.up_attention) and topo.up_attention[i]
            upsample_slot = 2 if has_attn else 1
            if i < len(topo.up_attention):
                if slot == 0:
                    return _join(f"up_blocks.{i}.resnets.{j}", _resnet_inner_to_diffusers(rest, path))
                if slot == 1 and has_attn:
                    return _join(f"up_blocks.{i}.attentions.{j}", rest)
                if slot == upsample_slot and j == per - 1 and i < len(topo.up_attention) - 1:
                    return _join(f"up_blocks.{i}.upsamplers.0", rest)
        elif parts[0] == "middle_block":
            (_, n), rest = _split_at(path, 2)
            n = int(n)
            if n in (0, 2):
                return _join(f"mid_block.resnets.{n // 2}", _resnet_inner_to_diffusers(rest, path))
            if n == 1:
                return _join("mid_block.attentions.0", rest)
    except (ValueError, IndexError) as exc:
        if isinstance(exc, UnknownKeyError):
            raise
        raise UnknownKeyError(f"not an original U-Net name for {arch}: {path!r}") from None
    raise UnknownKeyError(f"not an original U-Net name for {arch}: {path!r}")


def unet_key_to_original(key: str, arch: Arch) -> str:
    """Diffusers U-Net state-dict key -> full single-file key (with ``model.diffusion_model.``)."""
    return UNET_PREFIX + unet_module_to_original(key, arch)


def unet_key_to_diffusers(key: str, arch: Arch) -> str:
    """Full single-file U-Net key (``model.diffusion_model.…``) -> diffusers state-dict key."""
    if not key.startswith(UNET_PREFIX):
        raise UnknownKeyError(f"not a U-Net key (no {UNET_PREFIX!r} prefix): {key!r}")
    return unet_module_to_diffusers(key[len(UNET_PREFIX):], arch)


# ---------------------------------------------------------------- VAE (same topology for SDXL and SD 1.5)
VAE_LEVELS = 4
_VAE_TOP_TO_ORIGINAL = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out",
                        "encoder.mid_block.resnets.0": "encoder.mid.block_1",
                        "encoder.mid_block.resnets.1": "encoder.mid.block_2",
                        "encoder.mid_block.attentions.0": "encoder.mid.attn_1",
                        "decoder.mid_block.resnets.0": "decoder.mid.block_1",
                        "decoder.mid_block.resnets.1": "decoder.mid.block_2",
                        "decoder.mid_block.attentions.0": "decoder.mid.attn_1"}
_VAE_TOP_TO_DIFFUSERS = {v: k for k, v in _VAE_TOP_TO_ORIGINAL.items()}
_VAE_INNER_TO_ORIGINAL = {"conv_shortcut": "nin_shortcut", "group_norm": "norm", "to_q": "q", "to_k": "k",
                          "to_v": "v", "to_out.0": "proj_out"}
_VAE_INNER_TO_DIFFUSERS = {v: k for k, v in _VAE_INNER_TO_ORIGINAL.items()}
_VAE_IDENTITY = ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out",
                 "quant_conv", "post_quant_conv")
# mid-block attention projections: Linear in diffusers, 1x1 Conv2d in LDM (shapes differ)
VAE_ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def _vae_inner(rest: str, table: dict[str, str]) -> str:
    mapped = _map_prefix(rest, table)
    return rest if mapped is None else mapped


def vae_key_to_original(key: str, levels: int = VAE_LEVELS) -> str:
    """Diffusers ``AutoencoderKL`` key -> LDM key without ``first_stage_model.`` (sd-scripts convert_vae_state_dict)."""
    for ident in _VAE_IDENTITY:
        if key == ident or key.startswith(ident + "."):
            return key
    for head, new in _VAE_TOP_TO_ORIGINAL.items():
        if key == head or key.startswith(head + "."):
            return _join(new, _vae_inner(key[len(head) + 1:], _VAE_INNER_TO_ORIGINAL))
    m = re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0|upsamplers\.0)(?:\.(.*))?", key)
    if m:
        side, direction, i, kind, j, rest = m.groups()
        if (side == "encoder") != (direction == "down"):
            raise UnknownKeyError(f"not a diffusers VAE name: {key!r}")
        level = int(i) if side == "encoder" else levels - 1 - int(i)  # LDM numbers decoder levels bottom-up
        block = "down" if side == "encoder" else "up"
        if j is not None:
            return _join(f"{side}.{block}.{level}.block.{j}", _vae_inner(rest or "", _VAE_INNER_TO_ORIGINAL))
        sampler = "downsample" if side == "encoder" else "upsample"
        return _join(f"{side}.{block}.{level}.{sampler}", rest or "")
    raise UnknownKeyError(f"not a diffusers VAE name: {key!r}")


def vae_key_to_diffusers(key: str, levels: int = VAE_LEVELS) -> str:
    """LDM VAE key (without ``first_stage_model.``) -> diffusers ``AutoencoderKL`` key."""
    for ident in _VAE_IDENTITY:
        if key == ident or key.startswith(ident + "."):
            return key
    for head, new in _VAE_TOP_TO_DIFFUSERS.items():
        if key == head or key.startswith(head + "."):
            return _join(new, _vae_inner(key[len(head) + 1:], _VAE_INNER_TO_DIFFUSERS))
    m = re.fullmatch(r"(encoder|decoder)\.(down|up)\.(\d+)\.(block\.(\d+)|downsample|upsample)(?:\.(.*))?", key)
    if m:
        side, direction, n, kind, j, rest = m.groups()
        if (side == "encoder") != (direction == "down"):
            raise UnknownKeyError(f"not an LDM VAE name: {key!r}")
        level = int(n) if side == "encoder" else levels - 1 - int(n)
        block = "down_blocks" if side == "encoder" else "up_blocks"
        if j is not None:
            return _join(f"{side}.{block}.{level}.resnets.{j}", _vae_inner(rest or "", _VAE_INNER_TO_DIFFUSERS))
        sampler = "downsamplers.0" if side == "encoder" else "upsamplers.0"
        return _join(f"{side}.{block}.{level}.{sampler}", rest or "")
    raise UnknownKeyError(f"not an LDM VAE name: {key!r}")


def is_vae_attention_weight(diffusers_key: str) -> bool:
    """True for the mid-block attention projection weights stored as 1x1 convs in LDM files."""
    return ".mid_block.attentions." in diffusers_key and diffusers_key.endswith(".weight") and any(
        diffusers_key.endswith(f".{p}.weight") for p in VAE_ATTENTION_PROJECTIONS)


# ---------------------------------------------------------------- text encoders
def te1_key_to_original(key: str, arch: Arch) -> str:
    """HF CLIP-L key (with ``text_model.``) -> single-file key; the names are kept, only prefixed."""
    if not key.startswith("text_model."):
        raise UnknownKeyError(f"TE1 names must start with 'text_model.': {key!r}")
    return TE1_PREFIX[arch] + key


def te1_key_to_diffusers(key: str, arch: Arch) -> str:
    """Single-file TE1 key -> HF key with ``text_model.`` (old files without it get it added)."""
    prefix = TE1_PREFIX[arch]
    if not key.startswith(prefix):
        raise UnknownKeyError(f"not a TE1 key (no {prefix!r} prefix): {key!r}")
    rest = key[len(prefix):]
    return rest if rest.startswith("text_model.") else "text_model." + rest


_TE2_LAYER_TO_OPENCLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
                          "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}
_TE2_LAYER_TO_HF = {v: k for k, v in _TE2_LAYER_TO_OPENCLIP.items()}
_TE2_TOP_TO_OPENCLIP = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                        "text_model.embeddings.position_embedding.weight": "positional_embedding",
                        "text_model.final_layer_norm.weight": "ln_final.weight",
                        "text_model.final_layer_norm.bias": "ln_final.bias",
                        "text_projection.weight": "text_projection"}
_TE2_TOP_TO_HF = {v: k for k, v in _TE2_TOP_TO_OPENCLIP.items()}
TE2_QKV = ("q_proj", "k_proj", "v_proj")


def te2_key_to_original(key: str) -> str:
    """HF bigG key -> OpenCLIP single-file key. q/k/v projections all map to the shared ``in_proj`` key.

    ``text_projection.weight`` maps to ``text_projection``, which is stored *transposed* (SGM computes
    ``x @ P``; an HF Linear computes ``x @ W.T``) — the tensor side is in ``checkpoint.py``.
    Source: sd-scripts ``convert_text_encoder_2_state_dict_to_sdxl``, diffusers ``convert_open_clip_checkpoint``.
    """
    if key in _TE2_TOP_TO_OPENCLIP:
        return TE2_PREFIX + _TE2_TOP_TO_OPENCLIP[key]
    m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if m:
        n, module, param = m.groups()
        if module.startswith("self_attn.") and module.split(".")[1] in TE2_QKV:
            return f"{TE2_PREFIX}transformer.resblocks.{n}.attn.in_proj_{param}"
        if module in _TE2_LAYER_TO_OPENCLIP:
            return f"{TE2_PREFIX}transformer.resblocks.{n}.{_TE2_LAYER_TO_OPENCLIP[module]}.{param}"
    raise UnknownKeyError(f"not an HF text_encoder_2 name: {key!r}")


def te2_key_to_diffusers(key: str) -> list[str]:
    """OpenCLIP single-file key -> HF key(s); ``in_proj_*`` gives the three q/k/v keys (in that order)."""
    if not key.startswith(TE2_PREFIX):
        raise UnknownKeyError(f"not a TE2 key (no {TE2_PREFIX!r} prefix): {key!r}")
    rest = key[len(TE2_PREFIX):]
    if rest in _TE2_TOP_TO_HF:
        return [_TE2_TOP_TO_HF[rest]]
    m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", rest)
    if m:
        n, module, param = m.groups()
        if module in _TE2_LAYER_TO_HF:
            return [f"text_model.encoder.layers.{n}.{_TE2_LAYER_TO_HF[module]}.{param}"]
    m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", rest)
    if m:
        n, param = m.groups()
        return [f"text_model.encoder.layers.{n}.self_attn.{p}.{param}" for p in TE2_QKV]
    raise UnknownKeyError(f"not an OpenCLIP text encoder name: {key!r}")


# ---------------------------------------------------------------- whole-key dispatch
def component_prefixes(arch: Arch) -> dict[str, str]:
    """Single-file prefix of each component for an architecture."""
    out = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "te1": TE1_PREFIX[arch]}
    if arch == "sdxl":
        out["te2"] = TE2_PREFIX
    return out


def key_to_original(component: Component, key: str, arch: Arch) -> str:
    """Diffusers/HF key of a component -> full single-file key."""
    if component == "unet":
        return unet_key_to_original(key, arch)
    if component == "vae":
        return VAE_PREFIX + vae_key_to_original(key)
    if component == "te1":
        return te1_key_to_original(key, arch)
    if component == "te2" and arch == "sdxl":
        return te2_key_to_original(key)
    raise ValueError(f"no component {component!r} in {arch}")


def key_to_diffusers(component: Component, key: str, arch: Arch) -> list[str]:
    """Full single-file key -> diffusers/HF key(s) of that component (a list: TE2 in_proj gives three)."""
    if component == "unet":
        return [unet_key_to_diffusers(key, arch)]
    if component == "vae":
        if not key.startswith(VAE_PREFIX):
            raise UnknownKeyError(f"not a VAE key (no {VAE_PREFIX!r} prefix): {key!r}")
        return [vae_key_to_diffusers(key[len(VAE_PREFIX):])]
    if component == "te1":
        return [te1_key_to_diffusers(key, arch)]
    if component == "te2" and arch == "sdxl":
        return te2_key_to_diffusers(key)
    raise ValueError(f"no component {component!r} in {arch}")
