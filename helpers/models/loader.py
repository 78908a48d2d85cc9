"""Load an SDXL / SD 1.5 model for training: diffusers models, tokenizers and a DDPM noise scheduler.

Owns ``load_model`` -> ``ModelBundle`` and ``load_component``. Sources: a single-file checkpoint, a diffusers
folder, or a Hugging Face Hub repo id (downloaded with ``huggingface_hub.snapshot_download``, weights-only
patterns, resumable, cached).

How models are built (our choice, not ``from_single_file``): each component is created on the meta device
from its config and filled tensor by tensor from :class:`helpers.models.checkpoint.Checkpoint`, so any
layout loads through the same code and memory holds one copy of the weights. Configs come from, in order:
the diffusers folder's own ``config.json`` files; the ``tunebook.configs`` metadata our single files carry;
the real SDXL-base / SD 1.5 configs shipped in ``helpers/models/configs/``. Any key or shape mismatch is
an error naming the component and tensor.

Tokenizers: a diffusers folder carries its own. Single files do not; the 514-token byte-level vocabulary of
the tiny test models is rebuilt from ``tiny.py``, the real 49408-token CLIP vocabulary is fetched once from a
Hub reference repo (cached; works offline afterwards) or taken from ``tokenizers_from``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Checkpoint, CheckpointError, open_checkpoint

CONFIG_ROOT = Path(__file__).parent / "configs"
SUBFOLDER = {"unet": "unet", "vae": "vae", "te1": "text_encoder", "te2": "text_encoder_2"}
# where the real CLIP tokenizers come from for single files (two small files per tokenizer)
TOKENIZER_REPOS = {"sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", ["tokenizer", "tokenizer_2"]),
                   "sd15": ("stable-diffusion-v1-5/stable-diffusion-v1-5", ["tokenizer"])}
TINY_VOCAB = 514
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# a Hub download takes only what a diffusers pipeline needs (no fp16 duplicates, pickles, ONNX, root single files)
HUB_ALLOW = ["model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*", "*/config.json",
             "unet/*.safetensors*", "vae/*.safetensors*", "text_encoder/*.safetensors*",
             "text_encoder_2/*.safetensors*"]
HUB_IGNORE = ["*.fp16.safetensors", "*.fp16.safetensors.index.json", "*.onnx*", "*.msgpack", "*.bin"]


@dataclass
class ModelBundle:
    """Everything training needs from a base model."""

    arch: str
    prediction: str
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any
    source: str
    metadata: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- source resolution
def download_model_repo(repo_id: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        token: str | None = None) -> Path:
    """Download (or find in the HF cache) the diffusers files of a Hub repo; returns the local folder."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                   allow_patterns=HUB_ALLOW, ignore_patterns=HUB_IGNORE)
    except Exception as exc:  # offline, missing repo, gated repo: all reach the user as one clear message
        raise CheckpointError(f"could not get {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}: "
                              f"{exc}). Check the repo id, your connection, and for gated repos your HF login"
                              ) from None
    return Path(folder)


def resolve_source(source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local file/folder as is; an ``owner/name`` that is not a local path is fetched from the Hub."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = str(source)
    if REPO_ID.match(text):
        return download_model_repo(text, cache_dir=cache_dir)
    raise CheckpointError(f"{text}: no such file or folder, and not a Hub repo id (owner/name)")


# ---------------------------------------------------------------- configs
def _shipped_config(arch: str, component: str) -> dict[str, Any]:
    return json.loads((CONFIG_ROOT / arch / SUBFOLDER[component] / "config.json").read_text(encoding="utf-8"))


def component_config(ck: Checkpoint, component: str) -> dict[str, Any]:
    """The config a component is built from (see module docstring for the order of sources)."""
    if ck.layout == "diffusers":
        f = ck.path / SUBFOLDER[component] / "config.json"
        if f.exists():
            return json.loads(f.read_text(encoding="utf-8"))
        raise CheckpointError(f"{f}: missing; the download is incomplete")
    stored = ck.metadata.get("tunebook.configs")
    if stored:
        configs = json.loads(stored)
        if configs.get(component):
            return configs[component]
    return _shipped_config(ck.arch, component)


def _empty_model(component: str, config: dict[str, Any]):
    """The component's module with parameters on the meta device (buffers real), from a config dict."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        if component == "unet":
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel.from_config(config)
        if component == "vae":
            from diffusers import AutoencoderKL

            return AutoencoderKL.from_config(config)
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        cfg = CLIPTextConfig.from_dict({k: v for k, v in config.items() if k not in ("architectures",)})
        return (CLIPTextModelWithProjection if component == "te2" else CLIPTextModel)(cfg)


def _checkpoint_name(component: str, model_key: str) -> str:
    if component in ("te1", "te2") and not model_key.startswith(("text_model.", "text_projection")):
        return "text_model." + model_key  # transformers >= 5.6 leaves the prefix out of CLIPTextModel
    return model_key


def load_component(ck: Checkpoint, component: str, *, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu", config: dict[str, Any] | None = None):
    """Build one component (unet / vae / te1 / te2) and fill it from the checkpoint, strictly.

    Raises :class:`CheckpointError` naming missing, unexpected or mis-shaped tensors.
    """
    config = config or component_config(ck, component)
    model = _empty_model(component, config)
    expected = model.state_dict()
    names = {k: _checkpoint_name(component, k) for k in expected}
    available = set(ck.keys(component))
    missing = [n for n in names.values() if n not in available]
    unexpected = sorted(available - set(names.values()))
    if missing or unexpected:
        raise CheckpointError(
            f"{ck.path}: {component} does not match its {ck.arch} config ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors; e.g. missing {missing[:3]}, unexpected {unexpected[:3]}). "
            "The file may be a different architecture or damaged")
    state = {}
    for key, name in names.items():
        shape = ck.shape(component, name)
        if tuple(shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{ck.path}: {component} tensor {name} has shape {tuple(shape)}, its config "
                                  f"expects {tuple(expected[key].shape)}: wrong architecture or config")
        t = ck.get(component, name)
        state[key] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device)
    return model


# ---------------------------------------------------------------- tokenizers and scheduler
def _tiny_tokenizers(count: int) -> list[Any]:
    """The byte-level vocabulary of the tiny models (its 514-row embedding says so), rebuilt offline."""
    import tempfile

    from .tiny import EOS, build_tokenizer

    root = Path(tempfile.mkdtemp(prefix="tunebook-tok-"))
    pads = [EOS, "!"][:count]  # SDXL's second tokenizer pads with "!" like the real one
    return [build_tokenizer(root / f"tokenizer{i}", pad) for i, pad in enumerate(pads)]


def load_tokenizers(ck: Checkpoint, tokenizers_from: str | os.PathLike | None = None) -> list[Any]:
    """Tokenizers for a checkpoint: its own folder's, ``tokenizers_from``'s, byte-level (tiny) or the Hub's."""
    from transformers import CLIPTokenizer

    subfolders = ["tokenizer", "tokenizer_2"][: 2 if ck.arch == "sdxl" else 1]
    vocab = ck.shape("te1", "text_model.embeddings.token_embedding.weight")[0]
    for root in ([ck.path] if ck.layout == "diffusers" else []) + ([Path(tokenizers_from)] if tokenizers_from and
                                                                  Path(tokenizers_from).exists() else []):
        if all((root / s).is_dir() for s in subfolders):
            tokenizers = [CLIPTokenizer.from_pretrained(str(root / s)) for s in subfolders]
            sizes = [len(t) for t in tokenizers]
            if any(n != vocab for n in sizes):
                raise CheckpointError(f"{root}: tokenizer vocabulary sizes {sizes} do not match the text encoder's "
                                      f"{vocab} tokens: the tokenizer files are missing or from another model")
            return tokenizers
    if vocab == TINY_VOCAB:
        return _tiny_tokenizers(len(subfolders))
    repo, subs = (str(tokenizers_from), subfolders) if tokenizers_from else TOKENIZER_REPOS[ck.arch]
    try:
        tokenizers = [CLIPTokenizer.from_pretrained(repo, subfolder=s) for s in subs]
        problem = "" if all(len(t) == vocab for t in tokenizers) else "vocabulary missing or of the wrong size"
    except Exception as exc:
        problem = type(exc).__name__
    if problem:  # transformers 5 returns an empty 2-token tokenizer when offline instead of raising
        raise CheckpointError(
            f"the CLIP tokenizer is not stored in single-file checkpoints; fetching it from {repo!r} failed "
            f"({problem}). Connect to the internet once (it is cached afterwards), or pass "
            "tokenizers_from=<a diffusers folder of the same family>")
    return tokenizers


def load_noise_scheduler(ck: Checkpoint, prediction: str):
    """A DDPMScheduler with the model's training noise schedule and the given prediction type."""
    from diffusers import DDPMScheduler

    from .export import standard_scheduler_config

    config = standard_scheduler_config(prediction)
    sched = ck.path / "scheduler" / "scheduler_config.json" if ck.layout == "diffusers" else None
    if sched is not None and sched.exists():
        config = json.loads(sched.read_text(encoding="utf-8"))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config.update(prediction_type=prediction, clip_sample=False)
    return DDPMScheduler.from_config(config)


# ---------------------------------------------------------------- entry point
def load_model(source: str | os.PathLike, *, arch: str | None = None, prediction: str | None = None,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", allow_pickle: bool = False,
               tokenizers_from: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None) -> ModelBundle:
    """Load a model from a single file, a diffusers folder or a Hub repo id, ready for training.

    ``arch`` (optional) is checked against the file; ``prediction`` overrides what the file says (files
    rarely record it; v-prediction models need it set if they carry neither metadata nor a ``v_pred`` key).
    """
    if arch not in (None, "sdxl", "sd15"):
        raise ValueError(f"arch must be 'sdxl', 'sd15' or None, got {arch!r}")
    if prediction not in (None, "epsilon", "v_prediction"):
        raise ValueError(f"prediction must be 'epsilon', 'v_prediction' or None, got {prediction!r}")
    path = resolve_source(source, cache_dir=cache_dir)
    with open_checkpoint(path, allow_pickle=allow_pickle) as ck:
        if arch is not None and arch != ck.arch:
            names = {"sdxl": "SDXL", "sd15": "SD 1.5"}
            raise CheckpointError(f"{path}: this is an {names[ck.arch]} model, but arch={arch!r} was declared; "
                                  f"set arch to {ck.arch!r} (or leave it empty to detect it)")
        want = ["unet", "vae", "te1"] + (["te2"] if ck.arch == "sdxl" else [])
        absent = [c for c in want if c not in ck.components()]
        if absent:
            raise CheckpointError(f"{path}: has no {', '.join(absent)}; a full {ck.arch} model is needed "
                                  "(this may be a U-Net-only file)")
        pred = prediction or ck.prediction
        tokenizers = load_tokenizers(ck, tokenizers_from)  # first: an offline tokenizer problem fails in seconds
        models = {c: load_component(ck, c, dtype=dtype, device=device) for c in want}
        scheduler = load_noise_scheduler(ck, pred)
        return ModelBundle(arch=ck.arch, prediction=pred, unet=models["unet"], vae=models["vae"],
                           text_encoders=[models[c] for c in want[2:]], tokenizers=tokenizers,
                           noise_scheduler=scheduler, source=str(source), metadata=dict(ck.metadata))
