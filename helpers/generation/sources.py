"""What to generate from, and loading it: a base model, a training checkpoint, a run's state, a run folder.

Owns ``find_model_source`` (any of those -> what to load, with a note on what was picked), the "still being
written" checks, ``estimate_memory`` (what a model needs before anything is loaded) and ``load_for_generation``
(``helpers.models.load_model`` in the chosen dtypes, with a training state's trained weights put in).

Training state folders (``runs/<run>/state/step-N/``, written by ``helpers.training.checkpoints``) are read by
their file format: ``trainer.json`` (``config.model`` names the base) and ``weights.safetensors`` (``unet.*``,
``te1.*``, ``te2.*``: the trained models' own state dicts). The base is loaded and those weights replace its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from helpers.models import CheckpointError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Working memory besides the weights, per image: U-Net activations per latent pixel (x2 for CFG) and VAE decode
# per output pixel, at 2-byte precision. First-order figures for SDPA attention; bench/generation.py prints the
# measured peak beside this estimate so they can be checked on each GPU.
UNET_BYTES_PER_LATENT_PIXEL = 48_000
VAE_BYTES_PER_PIXEL = 1_500


@dataclass
class ModelSource:
    """What ``load_for_generation`` reads."""

    path: Path  # a single file, a diffusers folder or a Hub repo id
    label: str  # the model name images record
    note: str  # how it was picked, for the user
    state: Path | None = None  # a training state whose trained weights replace the base's
    arch: str | None = None
    prediction: str | None = None
    allow_pickle: bool = False
    zero_terminal_snr: bool | None = None  # what a training state's config says (files say it in metadata)


@dataclass
class MemoryEstimate:
    weights_gb: dict[str, float]
    working_gb: float
    free_gb: float | None
    device: str

    @property
    def total_gb(self) -> float:
        return sum(self.weights_gb.values()) + self.working_gb

    def describe(self) -> str:
        parts = " + ".join(f"{k} {v:.2f}" for k, v in self.weights_gb.items())
        free = f", {self.free_gb:.1f} GB free" if self.free_gb is not None else ""
        return (f"needs about {self.total_gb:.1f} GB on {self.device} (weights {parts} GB, working memory "
                f"{self.working_gb:.1f} GB){free}")


def _is_temporary(path: Path) -> bool:
    name = path.name
    return name.startswith(".tmp-") or (name.startswith(".") and name.endswith(".tmp"))


def check_complete(path: Path, settle_s: float = 1.0) -> None:
    """Refuse files and states still being written (temp names, a size that is changing, no trainer.json)."""
    if _is_temporary(path):
        raise CheckpointError(f"{path} is the temporary file of a save in progress; wait for the save to finish and "
                              "use the final file")
    if path.is_dir() and path.name.startswith("step-") and not (path / "trainer.json").exists():
        raise CheckpointError(f"{path}: training state without trainer.json: it is still being written (or the save "
                              "was interrupted); wait, or pick another state")
    if path.is_file() and time.time() - path.stat().st_mtime < 5:
        before = path.stat()
        time.sleep(settle_s)
        after = path.stat()
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            raise CheckpointError(f"{path} is still being written (its size changed a moment ago); wait for the save "
                                  "to finish")


def _explain_incomplete(path: Path, exc: CheckpointError) -> CheckpointError:
    """A truncated file that changed in the last minutes is most likely a save in progress: say so."""
    if "truncated" in str(exc) and path.is_file():
        age = time.time() - path.stat().st_mtime
        if age < 600:
            return CheckpointError(f"{path} is incomplete and was modified {age:.0f} s ago: it is probably still being "
                                   "written; wait for the save to finish (training logs a 'checkpoint' event)")
    return exc


def _run_pick(run: Path) -> tuple[Path, str]:
    """The model a run folder stands for: its final file, else its newest checkpoint, else its newest state."""
    checkpoints = run / "checkpoints"
    final = checkpoints / f"{run.name}.safetensors"
    if final.is_file():
        return final, f"final model of run {run.name}"
    files = sorted(checkpoints.glob("*.safetensors"), key=lambda p: p.stat().st_mtime) if checkpoints.is_dir() else []
    if files:
        return files[-1], f"newest checkpoint of run {run.name} ({files[-1].name})"
    states = sorted((p for p in (run / "state").glob("step-*") if (p / "trainer.json").exists()),
                    key=lambda p: int(p.name[5:])) if (run / "state").is_dir() else []
    if states:
        return states[-1], f"newest training state of run {run.name} ({states[-1].name})"
    raise CheckpointError(f"{run}: the run has no checkpoint or training state yet; wait for the first save")


def _state_source(state: Path, models_dir: Path | None) -> ModelSource:
    info = json.loads((state / "trainer.json").read_text(encoding="utf-8"))
    model = info.get("config", {}).get("model", {})
    base = str(model.get("base_model", ""))
    if not base:
        raise CheckpointError(f"{state}/trainer.json does not name its base model (config.model.base_model)")
    candidates = [Path(base).expanduser()] + [d / base for d in (models_dir, state.parents[3] / "models") if d]
    found = next((c for c in candidates if c.exists()), None)
    run = state.parents[1].name
    return ModelSource(path=found or Path(base), label=f"{run}-step{info.get('step', state.name[5:])}",
                       note=f"training state {state.name} of run {run} on base {base}", state=state,
                       arch=None if model.get("arch", "auto") == "auto" else model["arch"],
                       prediction=None if model.get("prediction", "auto") == "auto" else model["prediction"],
                       allow_pickle=bool(model.get("allow_pickle", False)),
                       zero_terminal_snr=bool(info.get("config", {}).get("objective", {}).get("zero_terminal_snr")))


def find_model_source(source: str | os.PathLike, models_dir: Path | None = None) -> ModelSource:
    """A model file/folder, a workspace model name, a Hub id, a training state folder or a run folder."""
    path = Path(source).expanduser()
    if not path.exists() and models_dir is not None and (models_dir / str(source)).exists():
        path = models_dir / str(source)
    if not path.exists():
        if _is_temporary(path):
            check_complete(path)
        return ModelSource(path=Path(str(source)), label=str(source), note=f"{source} (Hub repo id)")
    check_complete(path)
    note = str(path)
    if path.is_dir() and ((path / "checkpoints").is_dir() or (path / "state").is_dir()) \
            and not (path / "model_index.json").exists():
        path, note = _run_pick(path)
    if path.is_dir() and (path / "trainer.json").exists():
        return _state_source(path, models_dir)
    label = path.stem if path.is_file() else path.name
    return ModelSource(path=path, label=label, note=note)


_HASHES: dict[tuple[str, int, int], str] = {}


def model_hash(path: Path) -> str:
    """A1111's "Model hash" (AutoV2): the first 10 hex digits of the file's sha256; "" for folders."""
    from helpers.changes import sha256_file

    if not path.is_file():
        return ""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = (sha256_file(path, progress=True) or "")[:10]
    return _HASHES[key]


def pick_dtypes(device: torch.device, arch: str, dtype: str = "auto", vae_dtype: str = "auto"
                ) -> tuple[torch.dtype, torch.dtype]:
    """(model dtype, VAE dtype): half precision on a GPU (bf16 where supported), fp32 on the CPU; never an fp16
    SDXL VAE (it overflows to NaN: fp32 or bf16 instead)."""
    for name, value in (("dtype", dtype), ("vae_dtype", vae_dtype)):
        if value not in ("auto", *DTYPES):
            raise ValueError(f"{name} must be auto, fp32, fp16 or bf16, got {value!r}")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    model = DTYPES[dtype] if dtype != "auto" else (
        (torch.bfloat16 if bf16 else torch.float16) if device.type == "cuda" else torch.float32)
    if vae_dtype != "auto":
        vae = DTYPES[vae_dtype]
    elif arch == "sdxl":
        vae = torch.bfloat16 if bf16 else torch.float32
    else:
        vae = model
    return model, vae


def free_memory_gb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 1e9
    try:
        import psutil

        return psutil.virtual_memory().available / 1e9
    except ImportError:
        return None


def trained_with_zero_terminal_snr(found: ModelSource, ck) -> bool:
    """Whether the model was trained with a zero-terminal-SNR schedule (our checkpoints record it)."""
    if found.zero_terminal_snr is not None:
        return found.zero_terminal_snr
    return ck.metadata.get("tunebook.zero_terminal_snr", "").lower() == "true"


def native_size(ck) -> int:
    """The image side a model was made for: U-Net sample size x VAE downscale (1024 SDXL, 512 SD 1.5)."""
    return size_rules(ck)[0]


def size_rules(ck) -> tuple[int, int]:
    """(native side, the multiple every side must be: VAE downscale x U-Net downsamplings; 32 SDXL, 64 SD 1.5)."""
    from helpers.models.loader import component_config

    unet, vae = component_config(ck, "unet"), component_config(ck, "vae")
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    return int(unet["sample_size"]) * scale, scale * 2 ** (len(unet["block_out_channels"]) - 1)


def model_size_rules(source: str | os.PathLike, models_dir: Path | None = None) -> tuple[int, int]:
    """``size_rules`` of a model source, from its headers and configs (nothing loaded)."""
    with open_source(find_model_source(source, models_dir)) as ck:
        return size_rules(ck)


@contextlib.contextmanager
def open_source(found: ModelSource):
    """The source's ``Checkpoint`` (headers only), a half-written file reported as such."""
    from helpers.models import open_checkpoint
    from helpers.models.loader import resolve_source

    try:
        ck = open_checkpoint(resolve_source(found.path), allow_pickle=found.allow_pickle)
    except CheckpointError as exc:
        raise _explain_incomplete(Path(found.path), exc) from None
    with ck:
        yield ck


def estimate_memory(ck, device: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype, width: int, height: int,
                    batch: int, offload: bool = False) -> MemoryEstimate:
    """Weights per component (from the file headers) plus working memory for one batch at this size.

    Working memory scales with the models' widths (320 U-Net / 128 VAE channels in SDXL and SD 1.5).
    """
    from helpers.models.loader import component_config

    weights = {}
    for component in ck.components():
        n = sum(int(torch.Size(ck.shape(component, k)).numel()) for k in ck.keys(component))
        size = torch.finfo(vae_dtype if component == "vae" else dtype).bits // 8
        weights[component] = n * size / 1e9
    if offload:  # only the biggest model is on the device at a time
        weights = {k: v for k, v in weights.items() if v == max(weights.values())}
    working = working_memory_gb(component_config(ck, "unet")["block_out_channels"][0],
                                component_config(ck, "vae")["block_out_channels"][0], width, height, batch, dtype,
                                vae_dtype)
    return MemoryEstimate(weights, working, free_memory_gb(device), str(device))


def working_memory_gb(unet_channels: int, vae_channels: int, width: int, height: int, batch: int,
                      dtype: torch.dtype, vae_dtype: torch.dtype) -> float:
    """Activation memory of one batch (CFG doubles the U-Net batch; the VAE decodes one image at a time)."""
    latent = (width // 8) * (height // 8)
    unet = UNET_BYTES_PER_LATENT_PIXEL * unet_channels / 320 * 2 * batch * latent * torch.finfo(dtype).bits / 16
    vae = VAE_BYTES_PER_PIXEL * vae_channels / 128 * width * height * torch.finfo(vae_dtype).bits / 16
    return (unet + vae) / 1e9


def load_state_weights(bundle, state: Path) -> list[str]:
    """Put a training state's trained weights into the bundle's models; returns which models changed."""
    from safetensors import safe_open

    models = {"unet": bundle.unet, **{f"te{i + 1}": te for i, te in enumerate(bundle.text_encoders)}}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(state / "weights.safetensors"), framework="pt", device="cpu") as f:
        for key in f.keys():
            name, _, rest = key.partition(".")
            if name in models:
                parts.setdefault(name, {})[rest] = f.get_tensor(key)
    if not parts:
        raise CheckpointError(f"{state}/weights.safetensors holds no unet/te weights: not a tunebook training state")
    for name, weights in parts.items():
        try:
            models[name].load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{state}: its {name} weights do not fit the base model ({str(exc)[:200]}): the "
                                  "state belongs to a run with another base") from None
    return sorted(parts)


def load_for_generation(source: ModelSource, *, device: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype,
                        tokenizers_from: str | os.PathLike | None = None):
    """A ``ModelBundle`` on ``device``: the VAE in ``vae_dtype``, the rest in ``dtype``, state weights applied."""
    from helpers.models import load_component, load_model, open_checkpoint
    from helpers.models.loader import resolve_source

    try:
        path = resolve_source(source.path)  # a Hub id becomes its local (cached) folder
        bundle = load_model(path, arch=source.arch, prediction=source.prediction, dtype=dtype, device=device,
                            allow_pickle=source.allow_pickle, tokenizers_from=tokenizers_from)
        if vae_dtype != dtype:
            with open_checkpoint(path, allow_pickle=source.allow_pickle) as ck:
                bundle.vae = load_component(ck, "vae", dtype=vae_dtype, device=device)
    except CheckpointError as exc:
        raise _explain_incomplete(Path(source.path), exc) from None
    if source.state is not None:
        load_state_weights(bundle, source.state)
    for model in [bundle.unet, bundle.vae, *bundle.text_encoders]:
        model.requires_grad_(False).eval()
    return bundle
