"""Image encoders (CLIP, SigLIP, DINOv2) shared by dataset advice and evaluation: fetch, load, embed.

``load_encoder(name_or_path, models_dir, device)`` returns an :class:`ImageEncoder` whose ``embed_images`` and
``embed_texts`` give L2-normalised float32 numpy rows, batched, on the GPU in fp16 when there is one. A name is a
short name from ``ENCODERS``, a Hub repo id (downloaded once into ``models_dir/<repo name>/`` with
``huggingface_hub``, weights as safetensors only) or a local folder in the transformers layout.

The default is OpenAI's CLIP ViT-L/14: its text tower *is* SD 1.5's text encoder and SDXL's first one, so its
image-text space is the one these models were conditioned on; it is the model CLIPScore (torchmetrics) and the
LyCORIS evaluation report with, so evaluation numbers compare with published ones; at 0.43 B parameters it fits
any GPU (0.9 GB in fp16). SigLIP so400m (``siglip-so400m``) classifies zero-shot better (ImageNet 83 % vs 76 %)
and is offered beside it.

Other kinds join through ``_FAMILIES``: a family says how to turn pixels and text into features; everything else
(download, device, batching, normalising) is shared. DINOv2 (``dinov2-base``, image only: the evaluation's image
similarity) is one; face models are ONNX and live in ``helpers.models.faces``.

``build_tiny_clip`` / ``build_tiny_dino`` write random-weight models with the real interfaces (tokenizer from
files, image processor config) for the demo and the tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from helpers.changes import sha256_text, write_text_atomic

ENCODERS = {
    "clip-vit-large-patch14": "openai/clip-vit-large-patch14",
    "clip-vit-base-patch32": "openai/clip-vit-base-patch32",
    "siglip-so400m": "google/siglip-so400m-patch14-384",
    "dinov2-base": "facebook/dinov2-base",
}
DEFAULT_DINO = "dinov2-base"
DEFAULT_ENCODER = "clip-vit-large-patch14"
# what a download takes: configs, tokenizer and processor files, safetensors weights (no pickles, no TF/Flax)
HUB_ALLOW = ["*.json", "*.txt", "*.model", "*.safetensors"]
HUB_IGNORE = ["*.msgpack", "*.h5", "*.bin", "*.onnx*", "*.ot"]
SOURCE_FILE = "source.json"


class EncoderError(RuntimeError):
    """An encoder cannot be found, downloaded or loaded; the message says what to do."""


@dataclass
class _Family:
    """How one kind of model turns inputs into feature rows (before normalising)."""

    image_features: Callable[[Any, torch.Tensor], torch.Tensor]
    text_features: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor] | None
    text_padding: str  # SigLIP was trained on max-length padded text; CLIP stops at its end token


def _pooled(out) -> torch.Tensor:
    """transformers >= 5 returns a model output from ``get_*_features``; older versions a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


_FAMILIES = {
    "clip": _Family(lambda m, px: _pooled(m.get_image_features(pixel_values=px)),
                    lambda m, tok: _pooled(m.get_text_features(**tok)), "longest"),
    "siglip": _Family(lambda m, px: _pooled(m.get_image_features(pixel_values=px)),
                      lambda m, tok: _pooled(m.get_text_features(input_ids=tok["input_ids"])), "max_length"),
    # DINOv2 (Oquab et al. 2023): image only; the layer-normed CLS token, as its image-similarity uses do
    "dinov2": _Family(lambda m, px: m(pixel_values=px).pooler_output, None, ""),
}


@dataclass
class ImageEncoder:
    """A loaded encoder: ``embed_images`` / ``embed_texts`` give L2-normalised float32 rows."""

    name: str
    kind: str
    model: Any
    processor: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    fingerprint: str  # names these weights in embedding caches
    logit_scale: float  # the model's learned temperature for image-text similarities

    @property
    def family(self) -> _Family:
        return _FAMILIES[self.kind]

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """RGB PIL images -> (n, d) unit rows."""
        rows = []
        for start in range(0, len(images), batch_size):
            batch = [im if im.mode == "RGB" else im.convert("RGB") for im in images[start:start + batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            feats = self.family.image_features(self.model, pixels.to(self.device, self.dtype))
            rows.append(_normalise(feats))
        return np.concatenate(rows) if rows else np.zeros((0, self.dim), np.float32)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Texts -> (n, d) unit rows (cut at the model's token limit)."""
        if self.family.text_features is None:
            raise EncoderError(f"{self.name} is an image-only encoder: it cannot embed text")
        rows = []
        for start in range(0, len(texts), batch_size):
            tok = self.tokenizer(list(texts[start:start + batch_size]), padding=self.family.text_padding,
                                 truncation=True, max_length=self.max_text_tokens, return_tensors="pt")
            feats = self.family.text_features(self.model, {k: v.to(self.device) for k, v in tok.items()})
            rows.append(_normalise(feats))
        return np.concatenate(rows) if rows else np.zeros((0, self.dim), np.float32)

    @property
    def max_text_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def has_text(self) -> bool:
        return self.family.text_features is not None

    @property
    def dim(self) -> int:
        config = self.model.config
        if not self.has_text:
            return int(config.hidden_size)
        return int(getattr(config, "projection_dim", None) or config.text_config.hidden_size)


def _normalise(feats: torch.Tensor) -> np.ndarray:
    feats = feats.float()
    return (feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy()


# ---------------------------------------------------------------------------------------------- finding files
def encoder_repo(name: str) -> str:
    return ENCODERS.get(name, name)


def is_encoder_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def is_image_text_encoder(folder: Path) -> bool:
    """A model folder whose config names an encoder kind this module loads (not a captioner or a tagger)."""
    try:
        kind = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return False
    return kind in _FAMILIES


def has_text_side(folder: Path) -> bool:
    """An encoder folder that can embed text too (CLIP, SigLIP; not DINOv2): what zero-shot classifying needs."""
    try:
        kind = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return False
    return kind in _FAMILIES and _FAMILIES[kind].text_features is not None


def fetch_encoder(name_or_path: str, models_dir: str | os.PathLike, *, revision: str | None = None,
                  endpoint: str | None = None) -> Path:
    """The local folder of an encoder: a folder as is (a path, or a folder name in ``models_dir``), else the Hub
    repo downloaded into ``models_dir/<repo name>`` once (safetensors weights, configs, tokenizer files)."""
    local = Path(name_or_path).expanduser()
    repo = encoder_repo(name_or_path)
    for candidate in (local, Path(models_dir) / name_or_path, Path(models_dir) / repo.split("/")[-1]):
        if candidate.is_dir() and is_encoder_folder(candidate):
            return candidate
    if local.is_dir():
        raise EncoderError(f"{local}: not an encoder folder (it needs config.json and *.safetensors weights)")
    if repo.count("/") != 1:
        raise EncoderError(f"unknown encoder {name_or_path!r}: use one of {', '.join(ENCODERS)}, a Hub repo id "
                           "(owner/name) or a folder with config.json + *.safetensors")
    dest = Path(models_dir) / repo.split("/")[-1]
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo, revision=revision, local_dir=dest, allow_patterns=HUB_ALLOW,
                          ignore_patterns=HUB_IGNORE, endpoint=endpoint)
    except Exception as exc:  # offline, missing or gated repo: one message with the way out
        raise EncoderError(f"could not download {repo} into {dest} ({type(exc).__name__}: {exc}). Check the repo "
                           "id and your connection, or copy the model folder there yourself") from None
    if not is_encoder_folder(dest):
        raise EncoderError(f"{repo}: downloaded, but it has no safetensors weights; pick a repo that ships "
                           "model.safetensors (tunebook does not load pickled .bin weights)")
    write_text_atomic(dest / SOURCE_FILE, json.dumps({"repo": repo, "revision": revision or "main"}, indent=1))
    return dest


def weights_fingerprint(folder: Path) -> str:
    """A short id of the weights in ``folder`` (config plus each weight file's size and mtime): caches keyed by
    it never mix embeddings of two different models stored under one name."""
    parts = [(folder / "config.json").read_text(encoding="utf-8")]
    parts += [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(folder.glob("*.safetensors"))]
    return f"{folder.name}-{sha256_text(chr(10).join(parts))[:12]}"


# ---------------------------------------------------------------------------------------------- loading
def pick_device(device: str = "auto") -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise EncoderError("device 'cuda' asked for, but torch sees no GPU; use 'auto' or 'cpu'")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_encoder(name_or_path: str = DEFAULT_ENCODER, models_dir: str | os.PathLike = ".", device: str = "auto",
                 *, endpoint: str | None = None) -> ImageEncoder:
    """Fetch (first time) and load an image-text encoder; fp16 on a GPU, fp32 on the CPU."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    folder = fetch_encoder(name_or_path, models_dir, endpoint=endpoint)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    kind = config.get("model_type", "")
    if kind not in _FAMILIES:
        raise EncoderError(f"{folder}: model type {kind!r} is not an image-text encoder tunebook knows "
                           f"({', '.join(_FAMILIES)})")
    dev = pick_device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    try:
        model = AutoModel.from_pretrained(str(folder), dtype=dtype).to(dev).eval()
        # the PIL processor: the same pixels on every machine, with or without torchvision
        processor = AutoImageProcessor.from_pretrained(str(folder), backend="pil")
        tokenizer = AutoTokenizer.from_pretrained(str(folder)) if _FAMILIES[kind].text_features else None
    except (OSError, ValueError) as exc:
        raise EncoderError(f"{folder}: cannot load the encoder ({exc}); the download may be incomplete: delete "
                           "the folder and run again") from None
    return ImageEncoder(name=name_or_path, kind=kind, model=model, processor=processor, tokenizer=tokenizer,
                        device=dev, dtype=dtype, fingerprint=weights_fingerprint(folder),
                        logit_scale=float(model.logit_scale.detach().exp()) if hasattr(model, "logit_scale") else 1.0)


# ---------------------------------------------------------------------------------------------- tiny model
def build_tiny_clip(folder: str | os.PathLike, seed: int = 0, image_size: int = 32) -> Path:
    """A random-weight CLIP (2 layers, width 32) with a byte-level tokenizer and a processor config, saved in
    the transformers layout: what ``load_encoder`` reads from a Hub download."""
    from transformers import CLIPConfig, CLIPModel

    from helpers.models.tiny import EOS, write_tokenizer_files

    folder = Path(folder)
    torch.manual_seed(seed)
    text = dict(vocab_size=514, bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_size=32,
                intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=77)
    vision = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                  image_size=image_size, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(str(folder), safe_serialization=True)
    processor = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
                 "resample": 3, "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
                 "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
                 "image_mean": [0.48145466, 0.4578275, 0.40821073],  # OpenAI CLIP's own statistics
                 "image_std": [0.26862954, 0.26130258, 0.27577711]}
    write_text_atomic(folder / "preprocessor_config.json", json.dumps(processor, indent=1))
    write_tokenizer_files(folder, EOS)
    return folder


def build_tiny_dino(folder: str | os.PathLike, seed: int = 0, image_size: int = 32) -> Path:
    """A random-weight DINOv2 (2 layers, width 32) with its processor config, in the transformers layout: the
    stand-in for ``facebook/dinov2-base`` in the demo and the tests."""
    from transformers import Dinov2Config, Dinov2Model

    folder = Path(folder)
    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     image_size=image_size, patch_size=8))
    model.save_pretrained(str(folder), safe_serialization=True)
    processor = {"image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
                 "resample": 3, "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
                 "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
                 "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}  # ImageNet's, as DINOv2's
    write_text_atomic(folder / "preprocessor_config.json", json.dumps(processor, indent=1))
    return folder
