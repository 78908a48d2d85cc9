"""Write SDXL / SD 1.5 models: single-file safetensors in the original layout, or a diffusers folder.

Owns ``save_single_file`` (the LDM/SGM layout that A1111, ComfyUI and diffusers ``from_single_file`` load, with
``modelspec.*`` metadata), ``save_diffusers`` (folder export) and ``write_safetensors``, a streaming writer that
converts and writes one tensor at a time (peak extra memory: one tensor, not a second copy of the model) into
a temp file that replaces the target only when complete — so a full disk or a crash leaves the previous
file intact.

Facts (key layout, transposed ``text_projection``, 1x1-conv VAE attention) from diffusers
``scripts/convert_diffusers_to_original_sdxl.py`` and sd-scripts ``sdxl_model_util.py``; metadata fields from
the Stability AI ModelSpec (``modelspec.sai_model_spec`` 1.0.0) as sd-scripts writes them.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from . import keymap

Precision = Literal["fp16", "bf16", "fp32"]
PRECISIONS: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_DTYPE_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL"}
MODELSPEC_ARCH = {"sdxl": "stable-diffusion-xl-v1-base", "sd15": "stable-diffusion-v1"}
MODELSPEC_IMPL = {"sdxl": "https://github.com/Stability-AI/generative-models",
                  "sd15": "https://github.com/CompVis/stable-diffusion"}
RESOLUTION = {"sdxl": 1024, "sd15": 512}
# OpenCLIP's trained temperature sits at its clamp, ln(100); real SDXL files carry it, samplers ignore it
OPENCLIP_LOGIT_SCALE = math.log(100.0)


class DiskSpaceError(OSError):
    """Not enough free space to write a model; the previous file, if any, is untouched."""


# ---------------------------------------------------------------- streaming safetensors writer
TensorSource = Callable[[], torch.Tensor]


def _gib(n: int) -> str:
    return f"{n / 1024 ** 3:.2f} GiB"


def write_safetensors(path: str | os.PathLike, tensors: dict[str, tuple[tuple[int, ...], torch.dtype, TensorSource]],
                      metadata: dict[str, str] | None = None, *, progress: str | None = None) -> Path:
    """Write ``{name: (shape, dtype, make_tensor)}`` as one safetensors file, atomically, one tensor at a time.

    ``make_tensor()`` is called once per tensor when its bytes are due; its result is cast to ``dtype``.
    Checks free space first; on ENOSPC/any failure the temp file is removed and ``path`` keeps its old content.
    Format: https://github.com/huggingface/safetensors#format (u64 header size, JSON header, packed data).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    header: dict[str, Any] = {}
    offset = 0
    for name in names:
        shape, dtype, _ = tensors[name]
        if dtype not in _DTYPE_CODES:
            raise ValueError(f"{name}: dtype {dtype} cannot be written to safetensors")
        nbytes = math.prod(shape) * torch.tensor([], dtype=dtype).element_size()
        header[name] = {"dtype": _DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # data must start 8-byte aligned
    total = 8 + len(blob) + offset
    free = shutil.disk_usage(path.parent).free
    if free < total:
        raise DiskSpaceError(errno.ENOSPC, f"not enough disk space to write {path}: needs {_gib(total)}, "
                             f"{_gib(free)} free in {path.parent}; free some space or save elsewhere")
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    from tqdm.auto import tqdm

    try:
        with open(tmp, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for name in tqdm(names, desc=progress or f"writing {path.name}", unit="tensor",
                             disable=progress is None and total < 256 * 1024 ** 2):  # quiet for tiny files
                shape, dtype, make = tensors[name]
                t = make().detach().to(device="cpu", dtype=dtype).contiguous()
                if tuple(t.shape) != tuple(shape):
                    raise ValueError(f"{name}: planned shape {tuple(shape)}, got {tuple(t.shape)}")
                f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DiskSpaceError(errno.ENOSPC, f"disk filled while writing {path}: it needs {_gib(total)}; "
                                 f"the previous file is untouched. Free space or save elsewhere") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------- diffusers -> original plan
def _unwrap_state(model: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, config dict) of a diffusers/transformers model or a plain state dict."""
    if isinstance(model, dict):
        return model, None
    state = model.state_dict()
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}  # torch.compile wrapper
    config = getattr(model, "config", None)
    if config is None:
        cfg = None
    elif hasattr(config, "to_dict"):
        cfg = config.to_dict()
    else:
        cfg = dict(config)
    return state, cfg


def _te_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF text-encoder state with ``text_model.`` on every name and buffers dropped."""
    out = {}
    for k, v in state.items():
        if k.endswith("position_ids"):
            continue
        out[k if k.startswith(("text_model.", "text_projection")) else "text_model." + k] = v
    return out


def plan_original_layout(unet: dict[str, torch.Tensor], vae: dict[str, torch.Tensor],
                         text_encoders: list[dict[str, torch.Tensor]], arch: keymap.Arch, dtype: torch.dtype,
                         prediction: str = "epsilon") -> dict[str, tuple[tuple[int, ...], torch.dtype, TensorSource]]:
    """Map diffusers/HF state dicts to the single-file layout as a lazy write plan for :func:`write_safetensors`.

    TE2's q/k/v are concatenated into ``attn.in_proj_*``, its ``text_projection`` transposed; VAE mid-block
    attention weights become 1x1 convs. A ``v_pred`` marker key is added for v-prediction (ComfyUI reads it).
    """
    expected_tes = 2 if arch == "sdxl" else 1
    if len(text_encoders) != expected_tes:
        raise ValueError(f"{arch} needs {expected_tes} text encoder(s), got {len(text_encoders)}")
    for part, state in [("unet", unet), ("vae", vae)] + [(f"te{i + 1}", s) for i, s in enumerate(text_encoders)]:
        injected = next((k for k in state if ".base_layer." in k or ".lora_A." in k or ".lora_down." in k), None)
        if injected:  # adapter layers would be written as junk keys no client understands
            raise ValueError(f"{part} still has LoRA/adapter layers ({injected}); merge them into the weights "
                             "(e.g. fuse_lora / merge_and_unload) before saving a full checkpoint")
    plan: dict[str, tuple[tuple[int, ...], torch.dtype, TensorSource]] = {}

    def cast_to(t: torch.Tensor) -> torch.dtype:
        return dtype if t.is_floating_point() else t.dtype

    for k, t in unet.items():
        plan[keymap.unet_key_to_original(k, arch)] = (tuple(t.shape), cast_to(t), lambda t=t: t)
    for k, t in vae.items():
        key = keymap.VAE_PREFIX + keymap.vae_key_to_original(k)
        if keymap.is_vae_attention_weight(k) and t.ndim == 2:
            plan[key] = (tuple(t.shape) + (1, 1), cast_to(t), lambda t=t: t[:, :, None, None])
        else:
            plan[key] = (tuple(t.shape), cast_to(t), lambda t=t: t)
    for k, t in _te_names(text_encoders[0]).items():
        if k.startswith("text_projection"):
            continue  # CLIP-L's projection is not part of the SD/SDXL checkpoint
        plan[keymap.te1_key_to_original(k, arch)] = (tuple(t.shape), cast_to(t), lambda t=t: t)
    if arch == "sdxl":
        te2 = _te_names(text_encoders[1])
        for k, t in te2.items():
            key = keymap.te2_key_to_original(k)
            if k == "text_projection.weight":
                plan[key] = (tuple(reversed(t.shape)), cast_to(t), lambda t=t: t.T)
            elif ".self_attn.q_proj." in k:
                parts = [te2[k.replace("q_proj", p)] for p in keymap.TE2_QKV]
                shape = (sum(p.shape[0] for p in parts),) + tuple(t.shape[1:])
                plan[key] = (shape, cast_to(t), lambda parts=parts: torch.cat(parts, 0))
            elif ".self_attn.k_proj." in k or ".self_attn.v_proj." in k:
                continue  # written with q_proj
            else:
                plan[key] = (tuple(t.shape), cast_to(t), lambda t=t: t)
        plan[keymap.TE2_PREFIX + "logit_scale"] = ((), dtype, lambda: torch.tensor(OPENCLIP_LOGIT_SCALE))
    if prediction == "v_prediction":
        plan["v_pred"] = ((0,), dtype, lambda: torch.zeros(0))
    return plan


def modelspec_metadata(arch: keymap.Arch, prediction: str, title: str, resolution: int | None = None
                       ) -> dict[str, str]:
    """``modelspec.*`` fields (SAI ModelSpec 1.0.0) for a full checkpoint."""
    res = resolution or RESOLUTION[arch]
    return {"modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": MODELSPEC_ARCH[arch],
            "modelspec.implementation": MODELSPEC_IMPL[arch], "modelspec.title": title,
            "modelspec.resolution": f"{res}x{res}",
            "modelspec.date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
            "modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon"}


def save_single_file(unet: Any, vae: Any, text_encoders: list[Any], path: str | os.PathLike, *, arch: keymap.Arch,
                     precision: Precision = "fp16", metadata: dict[str, str] | None = None,
                     prediction: str = "epsilon", title: str | None = None) -> Path:
    """Write ONE safetensors in the original LDM/SGM layout, loadable by A1111, ComfyUI and diffusers.

    Components are diffusers/transformers models (or their state dicts). The file carries ``modelspec.*``
    metadata, the caller's ``metadata`` and ``tunebook.configs`` (component configs as JSON, so
    :func:`helpers.models.load_model` can rebuild models of any width). Written atomically: on failure the
    previous file at ``path`` survives.
    """
    if arch not in ("sdxl", "sd15"):
        raise ValueError(f"arch must be 'sdxl' or 'sd15', got {arch!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if prediction not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction must be 'epsilon' or 'v_prediction', got {prediction!r}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a single-file model must end in .safetensors")
    unet_state, unet_cfg = _unwrap_state(unet)
    vae_state, vae_cfg = _unwrap_state(vae)
    te_parts = [_unwrap_state(te) for te in text_encoders]
    plan = plan_original_layout(unet_state, vae_state, [s for s, _ in te_parts], arch, PRECISIONS[precision],
                                prediction)
    meta = modelspec_metadata(arch, prediction, title or path.stem)
    configs = {"unet": unet_cfg, "vae": vae_cfg}
    configs.update({f"te{i + 1}": cfg for i, (_, cfg) in enumerate(te_parts)})
    if all(configs.values()):
        meta["tunebook.configs"] = json.dumps(configs, default=str, sort_keys=True)
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    return write_safetensors(path, plan, meta)


# ---------------------------------------------------------------- diffusers folder export
def _write_component(folder: Path, model: Any, dtype: torch.dtype, filename: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state, _ = _unwrap_state(model)
    plan = {k: (tuple(t.shape), dtype if t.is_floating_point() else t.dtype, lambda t=t: t)
            for k, t in state.items() if not k.endswith("position_ids")}
    write_safetensors(folder / filename, plan, {"format": "pt"})
    if hasattr(model.config, "save_pretrained"):  # transformers config
        model.config.save_pretrained(str(folder))
    else:  # diffusers ConfigMixin
        model.save_config(str(folder))


def standard_scheduler_config(prediction: str) -> dict[str, Any]:
    """The noise schedule SD 1.5 and SDXL were trained with (scaled-linear betas 0.00085..0.012, 1000 steps)."""
    return {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "steps_offset": 1, "timestep_spacing": "leading", "prediction_type": prediction, "clip_sample": False,
            "set_alpha_to_one": False}


def save_diffusers(unet: Any, vae: Any, text_encoders: list[Any], tokenizers: list[Any],
                   folder: str | os.PathLike, *, arch: keymap.Arch, prediction: str = "epsilon",
                   precision: Precision = "fp16", overwrite: bool = False) -> Path:
    """Export a diffusers pipeline folder (``from_pretrained`` loads it), written beside and swapped in whole.

    An existing folder is kept as ``<folder>.previous`` when ``overwrite=True``, refused otherwise.
    """
    import diffusers
    from diffusers import EulerDiscreteScheduler

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists; pass overwrite=True (the old one is kept as "
                              f"{folder.name}.previous) or choose another folder")
    n_te = 2 if arch == "sdxl" else 1
    if len(text_encoders) != n_te or len(tokenizers) != n_te:
        raise ValueError(f"{arch} needs {n_te} text encoder(s) and tokenizer(s)")
    dtype = PRECISIONS[precision]
    tmp = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_component(tmp / "unet", unet, dtype, "diffusion_pytorch_model.safetensors")
        _write_component(tmp / "vae", vae, dtype, "diffusion_pytorch_model.safetensors")
        te_dirs = ["text_encoder", "text_encoder_2"][:n_te]
        tok_dirs = ["tokenizer", "tokenizer_2"][:n_te]
        for te, tok, te_dir, tok_dir in zip(text_encoders, tokenizers, te_dirs, tok_dirs, strict=True):
            _write_component(tmp / te_dir, te, dtype, "model.safetensors")
            tok.save_pretrained(str(tmp / tok_dir))
        EulerDiscreteScheduler(**{k: v for k, v in standard_scheduler_config(prediction).items()
                                  if k not in ("clip_sample", "set_alpha_to_one")}).save_config(str(tmp / "scheduler"))
        index: dict[str, Any] = {"_class_name": "StableDiffusionXLPipeline" if arch == "sdxl" else
                                 "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
                                 "scheduler": ["diffusers", "EulerDiscreteScheduler"],
                                 "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
        for te, tok, te_dir, tok_dir in zip(text_encoders, tokenizers, te_dirs, tok_dirs, strict=True):
            index[te_dir] = ["transformers", type(te).__name__]
            index[tok_dir] = ["transformers", type(tok).__name__]
        if arch == "sd15":
            index.update({"safety_checker": [None, None], "feature_extractor": [None, None],
                          "requires_safety_checker": False})
        else:
            index["force_zeros_for_empty_prompt"] = True
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        previous = folder.with_name(folder.name + ".previous")
        shutil.rmtree(previous, ignore_errors=True)
        folder.rename(previous)
    tmp.rename(folder)
    return folder

