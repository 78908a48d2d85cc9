"""Read SDXL / SD 1.5 checkpoints of any layout through one lazy interface.

Owns ``open_checkpoint`` and the ``Checkpoint`` reader, plus ``detect_architecture``. A checkpoint is a
single-file safetensors in the original LDM/SGM layout (what A1111/ComfyUI and our training write), a diffusers
folder (``model_index.json`` + ``unet/ vae/ text_encoder/ [text_encoder_2/]``), or a U-Net-only file in
diffusers naming. Whatever the layout, callers see diffusers/HF names and shapes (``keys``/``shape``/``get``),
with text-encoder names always carrying ``text_model.``. Tensors are read one at a time from memory-mapped
safetensors (``safe_open``); answering ``keys()`` reads only the JSON headers.

Pickle checkpoints (.ckpt/.pt/.bin/.pth) can run arbitrary code when loaded, so they are refused unless the
caller passes ``allow_pickle=True``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from . import keymap

Arch = Literal["sdxl", "sd15"]
Prediction = Literal["epsilon", "v_prediction"]
Layout = Literal["single_file", "diffusers"]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
DIFFUSERS_SUBFOLDERS = {"unet": "unet", "vae": "vae", "te1": "text_encoder", "te2": "text_encoder_2"}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors itself refuses headers above 100 MB
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
                       "F8_E5M2": torch.float8_e5m2}
# keys some real files carry that are buffers/training leftovers, not weights the models need
_IGNORED_SUFFIXES = ("position_ids", "logit_scale")


class CheckpointError(ValueError):
    """A model file or folder that cannot be read as SDXL / SD 1.5; the message says what to do."""


# ---------------------------------------------------------------- architecture detection
def _prediction_from_metadata(metadata: dict[str, str]) -> Prediction | None:
    value = (metadata.get("modelspec.prediction_type") or "").strip().lower()
    if value in ("v", "v_prediction", "v-prediction", "v_pred"):
        return "v_prediction"
    if value in ("epsilon", "eps"):
        return "epsilon"
    if str(metadata.get("ss_v_parameterization", "")).lower() == "true":
        return "v_prediction"
    return None


def detect_architecture(keys: Iterable[str], shapes: dict[str, tuple[int, ...]] | None = None
                        ) -> tuple[Arch, Prediction]:
    """Tell SDXL from SD 1.5 (and v-prediction from epsilon) from tensor names, optionally with shapes.

    Accepts original single-file keys, diffusers U-Net keys, or component-prefixed diffusers keys
    (``unet.down_blocks…``). Prediction is ``v_prediction`` only when the file carries the ``v_pred`` marker
    key (ComfyUI's convention); metadata-based detection lives in :class:`Checkpoint`.
    Raises :class:`CheckpointError` naming what was found when it is neither.
    """
    keys = list(keys)
    shapes = shapes or {}
    present = set(keys)
    prediction: Prediction = "v_prediction" if "v_pred" in present else "epsilon"

    def has_prefix(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if any(k.startswith(("lora_unet_", "lora_te", "lycoris_")) or ".lora_down." in k or ".lora_A." in k
           for k in keys):
        raise CheckpointError("this is a LoRA/LyCORIS file, not a full model: load a base model and apply it")
    # original layout
    if has_prefix("model.diffusion_model.") or has_prefix("conditioner.") or has_prefix("cond_stage_model."):
        if has_prefix("model.diffusion_model.joint_blocks.") or has_prefix("model.diffusion_model.double_blocks."):
            raise CheckpointError("this is an SD3/Flux-family model, not SDXL or SD 1.5")
        if has_prefix("conditioner.embedders.0.model.") and not has_prefix("conditioner.embedders.1."):
            raise CheckpointError("this is the SDXL *refiner* (one OpenCLIP text encoder); use an SDXL base model")
        if has_prefix("cond_stage_model.model."):
            raise CheckpointError("this is a Stable Diffusion 2.x model (OpenCLIP ViT-H text encoder); "
                                  "only SDXL and SD 1.5 are supported")
        if has_prefix("conditioner.embedders.1.model.") or has_prefix("model.diffusion_model.label_emb."):
            return "sdxl", prediction
        if has_prefix("cond_stage_model.transformer.") or has_prefix("model.diffusion_model.input_blocks.11."):
            k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
            if k in shapes and shapes[k][-1] == 1024:
                raise CheckpointError("this U-Net has 1024-wide cross-attention (Stable Diffusion 2.x); "
                                      "only SDXL and SD 1.5 are supported")
            return "sd15", prediction
    # diffusers naming (bare U-Net keys or component-prefixed)
    bare = [k[len("unet."):] if k.startswith("unet.") else k for k in keys]
    bare_set = set(bare)
    if any(k.startswith("down_blocks.") for k in bare):
        if "add_embedding.linear_1.weight" in bare_set:
            return "sdxl", prediction
        if any(k.startswith("down_blocks.3.") for k in bare):
            k = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
            if shapes.get(k, shapes.get("unet." + k, (0,)))[-1] == 1024:
                raise CheckpointError("this U-Net has 1024-wide cross-attention (Stable Diffusion 2.x); "
                                      "only SDXL and SD 1.5 are supported")
            return "sd15", prediction
    if any(k.startswith(("double_blocks.", "joint_blocks.", "transformer_blocks.")) for k in keys):
        raise CheckpointError("this looks like an SD3/Flux-family transformer model, not SDXL or SD 1.5")
    sample = ", ".join(sorted(keys)[:5]) or "no tensors at all"
    raise CheckpointError(f"not an SDXL or SD 1.5 model: found {len(keys)} tensors ({sample}, ...); "
                          "expected U-Net keys starting with 'model.diffusion_model.' or 'down_blocks.'")


# ---------------------------------------------------------------- safetensors access
def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(tensor entries {name: {dtype, shape, data_offsets}}, metadata) of a safetensors file, validated.

    Reads only the header; a file shorter than its header promises is reported as truncated.
    """
    path = Path(path)
    bad = CheckpointError(f"{path}: file is truncated or not a safetensors file: re-download it")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise bad
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > _MAX_HEADER or 8 + n > size:
                raise bad
            header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad from None
    if not isinstance(header, dict):
        raise bad
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for entry in header.values():
        if not isinstance(entry, dict) or "data_offsets" not in entry or "shape" not in entry:
            raise bad
        end = max(end, entry["data_offsets"][1])
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: file is truncated or not a safetensors file: re-download it "
                              f"(it has {size:,} bytes, its header describes {8 + n + end:,})")
    return header, {str(k): str(v) for k, v in metadata.items()}


class _SafetensorsFile:
    """One lazily opened safetensors file."""

    def __init__(self, path: Path):
        self.path = path
        self.entries, self.metadata = read_safetensors_header(path)
        self._handle = None

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        return _SAFETENSORS_DTYPES.get(self.entries[key]["dtype"], torch.float32)

    def get(self, key: str) -> torch.Tensor:
        if self._handle is None:
            from safetensors import safe_open

            try:
                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointError(f"{self.path}: file is truncated or not a safetensors file: "
                                      f"re-download it ({exc})") from None
        return self._handle.get_tensor(key)

    def close(self) -> None:
        self._handle = None


class _TensorDict:
    """A state dict already in memory (an opted-in pickle checkpoint)."""

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor]):
        self.path, self.tensors, self.metadata = path, tensors, {}

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].dtype

    def get(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def close(self) -> None:
        pass


def _refuse_pickle(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path}: refusing to load a pickle checkpoint ({path.suffix}): unpickling can run arbitrary code "
        "hidden in the file. Look for a .safetensors version of this model, or if you trust its source "
        "pass allow_pickle=True (CLI: --allow-pickle).")


def _load_pickle(path: Path) -> _TensorDict:
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: could not read this pickle checkpoint ({exc}); re-download it") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: pickle file holds a {type(obj).__name__}, not a state dict")
    return _TensorDict(path, {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)})


# ---------------------------------------------------------------- the reader
@dataclass(frozen=True)
class _Ref:
    """Where one diffusers-named tensor lives and how to turn the stored tensor into it."""

    source: int
    key: str
    transform: str = ""  # "", "q"/"k"/"v" (slice of in_proj), "transpose", "squeeze_1x1"


class Checkpoint:
    """Lazy, layout-independent view of an SDXL / SD 1.5 model. Build it with :func:`open_checkpoint`."""

    def __init__(self, path: Path, layout: Layout, arch: Arch, prediction: Prediction, metadata: dict[str, str],
                 sources: list, refs: dict[str, dict[str, _Ref]], unknown_keys: list[str]):
        self.path, self.layout, self.arch, self.prediction = path, layout, arch, prediction
        self.metadata = metadata
        self._sources = sources
        self._refs = refs
        self.unknown_keys = unknown_keys  # stored tensors that map to no component (reported, not loaded)

    def __repr__(self) -> str:
        parts = ", ".join(f"{c}: {len(self._refs[c])}" for c in self.components())
        return f"Checkpoint({str(self.path)!r}, {self.arch}, {self.prediction}, {self.layout}, {parts})"

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for s in self._sources:
            s.close()

    def components(self) -> list[str]:
        """Components present, in the order unet, vae, te1, te2."""
        return [c for c in ("unet", "vae", "te1", "te2") if self._refs.get(c)]

    def _component(self, component: str) -> dict[str, _Ref]:
        if component not in self.components():
            raise KeyError(f"{self.path}: no {component!r} in this checkpoint (it has {self.components()})")
        return self._refs[component]

    def keys(self, component: str) -> list[str]:
        """Diffusers / HF names of a component's tensors (text encoders with ``text_model.``)."""
        return list(self._component(component))

    def shape(self, component: str, name: str) -> tuple[int, ...]:
        """Shape of a tensor as :meth:`get` returns it, from the header only."""
        ref = self._ref(component, name)
        shape = self._sources[ref.source].shape(ref.key)
        if ref.transform in ("q", "k", "v"):
            return (shape[0] // 3,) + tuple(shape[1:])
        if ref.transform == "transpose":
            return tuple(reversed(shape))
        if ref.transform == "squeeze_1x1" and len(shape) == 4:
            return tuple(shape[:2])
        return tuple(shape)

    def dtype(self, component: str, name: str) -> torch.dtype:
        ref = self._ref(component, name)
        return self._sources[ref.source].dtype(ref.key)

    def _ref(self, component: str, name: str) -> _Ref:
        refs = self._component(component)
        if name not in refs:
            raise KeyError(f"{self.path}: {component} has no tensor {name!r}")
        return refs[name]

    def get(self, component: str, name: str) -> torch.Tensor:
        """One tensor in diffusers naming and shape, in its stored dtype."""
        ref = self._ref(component, name)
        tensor = self._sources[ref.source].get(ref.key)
        if ref.transform in ("q", "k", "v"):
            n = tensor.shape[0] // 3
            i = "qkv".index(ref.transform)
            return tensor[i * n:(i + 1) * n].clone()
        if ref.transform == "transpose":
            return tensor.T.contiguous()
        if ref.transform == "squeeze_1x1" and tensor.ndim == 4:
            return tensor[:, :, 0, 0].contiguous()
        return tensor

    def state_dict(self, component: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """All tensors of a component (diffusers names), optionally cast (floating-point tensors only)."""
        out = {}
        for name in self.keys(component):
            t = self.get(component, name)
            out[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return out

    def iter_tensors(self, component: str) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) one at a time, for streaming work on big models."""
        for name in self.keys(component):
            yield name, self.get(component, name)


def _te_name(key: str) -> str:
    """HF text-encoder key with the ``text_model.`` prefix transformers >= 5.6 leaves out."""
    return key if key.startswith(("text_model.", "text_projection")) else "text_model." + key


def _refs_from_original(keys: list[str], arch: Arch, source: int) -> tuple[dict[str, dict[str, _Ref]], list[str]]:
    refs: dict[str, dict[str, _Ref]] = {c: {} for c in ("unet", "vae", "te1", "te2")}
    prefixes = keymap.component_prefixes(arch)
    unknown = []
    for key in keys:
        component = next((c for c, p in prefixes.items() if key.startswith(p)), None)
        if component is None:
            if key != "v_pred":
                unknown.append(key)
            continue
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        try:
            names = keymap.key_to_diffusers(component, key, arch)
        except keymap.UnknownKeyError:
            unknown.append(key)
            continue
        if len(names) == 3:  # TE2 in_proj holds q, k, v stacked
            for name, part in zip(names, "qkv", strict=True):
                refs[component][name] = _Ref(source, key, part)
        elif component == "te2" and names[0] == "text_projection.weight":
            refs[component][names[0]] = _Ref(source, key, "transpose")
        elif component == "vae" and keymap.is_vae_attention_weight(names[0]):
            refs[component][names[0]] = _Ref(source, key, "squeeze_1x1")
        else:
            refs[component][names[0]] = _Ref(source, key)
    return refs, unknown


def _component_weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
    """The weight file(s) of one diffusers component folder (sharded, variant or plain)."""
    indexes = sorted(folder.glob("*.safetensors.index.json"), key=lambda f: (f.name.count("."), f.name))
    if indexes:  # sharded; the plain index (fewest dots) before variants like .fp16.
        weight_map = json.loads(indexes[0].read_text(encoding="utf-8")).get("weight_map", {})
        return [folder / name for name in sorted(set(weight_map.values()))]
    files = sorted(folder.glob("*.safetensors"))
    plain = [f for f in files if f.name.count(".") == 1]  # model.safetensors, not model.fp16.safetensors
    if plain or files:
        return plain[:1] or files[:1]
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        if not allow_pickle:
            raise _refuse_pickle(pickles[0])
        return pickles[:1]
    raise CheckpointError(f"{folder}: no weights found (expected *.safetensors): the download is incomplete, or "
                          "the repo only offers pickle .bin weights, which are not fetched for safety")


def _open_source(path: Path, allow_pickle: bool):
    if path.suffix in PICKLE_SUFFIXES:
        return _load_pickle(path)
    return _SafetensorsFile(path)


def _open_diffusers_folder(path: Path, allow_pickle: bool) -> Checkpoint:
    sources, refs, unknown = [], {}, []
    for component, sub in DIFFUSERS_SUBFOLDERS.items():
        folder = path / sub
        if not folder.is_dir():
            continue
        refs[component] = {}
        for f in _component_weight_files(folder, allow_pickle):
            if not f.exists():
                raise CheckpointError(f"{f}: shard listed in the index is missing: the download is incomplete")
            sources.append(_open_source(f, allow_pickle))
            for key in sources[-1].keys():
                if key.endswith(_IGNORED_SUFFIXES):
                    continue
                name = _te_name(key) if component in ("te1", "te2") else key
                refs[component][name] = _Ref(len(sources) - 1, key)
    if "unet" not in refs:
        raise CheckpointError(f"{path}: diffusers folder has no unet/ subfolder: the download is incomplete "
                              "or this is not an SDXL / SD 1.5 pipeline")
    unet_keys = list(refs["unet"])
    arch, _ = detect_architecture(unet_keys, {k: sources[r.source].shape(r.key) for k, r in refs["unet"].items()
                                              if "attn2.to_k" in k})
    if arch == "sdxl" and "te2" not in refs:
        raise CheckpointError(f"{path}: SDXL folder without text_encoder_2/: the download is incomplete")
    prediction: Prediction = "epsilon"
    sched = path / "scheduler" / "scheduler_config.json"
    if sched.exists():
        value = json.loads(sched.read_text(encoding="utf-8")).get("prediction_type", "epsilon")
        prediction = "v_prediction" if value == "v_prediction" else "epsilon"
    metadata = {}
    for s in sources:
        metadata.update(s.metadata)
    prediction = _prediction_from_metadata(metadata) or prediction
    return Checkpoint(path, "diffusers", arch, prediction, metadata, sources, refs, unknown)


def _open_single_file(path: Path, allow_pickle: bool) -> Checkpoint:
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise _refuse_pickle(path)
    source = _open_source(path, allow_pickle)
    keys = source.keys()
    shapes = {k: source.shape(k) for k in keys if "attn2.to_k" in k}
    arch, prediction = detect_architecture(keys, shapes)
    if any(k.startswith("down_blocks.") or k.startswith("unet.down_blocks.") for k in keys):
        # a U-Net saved in diffusers naming (e.g. diffusion_pytorch_model.safetensors on its own)
        strip = "unet." if any(k.startswith("unet.") for k in keys) else ""
        refs = {"unet": {k[len(strip):]: _Ref(0, k) for k in keys if k.startswith(strip)}}
        unknown = [k for k in keys if not k.startswith(strip)]
    else:
        refs, unknown = _refs_from_original(keys, arch, 0)
    prediction = _prediction_from_metadata(source.metadata) or prediction
    return Checkpoint(path, "single_file", arch, prediction, source.metadata, [source], refs, unknown)


def open_checkpoint(path: str | os.PathLike, *, allow_pickle: bool = False) -> Checkpoint:
    """Open a single-file checkpoint or a diffusers folder for lazy, diffusers-named reading.

    Raises :class:`CheckpointError` for a missing path, a truncated/corrupt file, a refused pickle file, or a
    model that is not SDXL / SD 1.5 (the message names what was found).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "model_index.json").exists() or (path / "unet").is_dir():
            return _open_diffusers_folder(path, allow_pickle)
        # a stored single-file model (models/<name>/<file>.safetensors beside its model.json)
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.suffix in (".safetensors", ".sft") + PICKLE_SUFFIXES)
        if len(files) == 1:
            return open_checkpoint(files[0], allow_pickle=allow_pickle)
        found = f"it holds {len(files)} model files ({', '.join(f.name for f in files[:4])})" if files else \
            "no model_index.json, unet/ or model file"
        raise CheckpointError(f"{path}: folder is not a diffusers model and {found}; "
                              "pass the .safetensors file itself or the pipeline folder")
    if path.suffix not in (".safetensors", ".sft") + PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: unsupported model file type {path.suffix!r}; expected .safetensors")
    return _open_single_file(path, allow_pickle)


def summarize_checkpoint(ck: Checkpoint) -> dict[str, Any]:
    """What a person wants to know about a model file, from headers only (no tensor data read)."""
    import math

    size = sum(f.stat().st_size for f in ([ck.path] if ck.path.is_file() else ck.path.rglob("*")) if f.is_file())
    components = {}
    for c in ck.components():
        names = ck.keys(c)
        dtypes = sorted({str(ck.dtype(c, n)).replace("torch.", "") for n in names})
        components[c] = {"tensors": len(names), "parameters": sum(math.prod(ck.shape(c, n)) for n in names),
                         "dtypes": dtypes}
    return {"path": str(ck.path), "arch": ck.arch, "prediction": ck.prediction, "layout": ck.layout,
            "size_bytes": size, "components": components, "unknown_keys": len(ck.unknown_keys),
            "title": ck.metadata.get("modelspec.title", "")}


def human_count(n: float) -> str:
    """A parameter count for people: 2.57G, 123M, 36.2K."""
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}T"
