"""Text-encoder output cache: encode each fixed caption once, as the latent cache encodes each image once.

When the text encoders are frozen (no full-fine-tune TE training, no adapter on them) and every caption reads
the same at every step (no shuffle, no dropout of any kind, no wildcards or caption/tag mixing), a caption's
text-encoder output never changes: ``data.cache_text_encoder_outputs`` encodes each distinct caption once before
training ("memory", or "disk" beside the latent cache for the next run) and the loss reads it instead of running
the encoders (kohya ``cache_text_encoder_outputs``). The cache is keyed by the caption's text, the token limit,
clip skip and a fingerprint of the text encoders' weights, so another model or setting never reuses it.

``cache_problems(cfg)`` is the refusal: the field that makes captions vary per step (or the text encoders
train), and why, before any model is loaded.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import torch

from helpers.training.components import weights_fingerprint

FIELD = "data.cache_text_encoder_outputs"
# caption settings that change a caption from step to step: (section.field, is it on?, why)
VARYING = (
    ("captions.shuffle_caption", lambda c: c.shuffle_caption, "tags are shuffled each step"),
    ("captions.tag_dropout", lambda c: c.tag_dropout > 0, "tags are dropped by chance each step"),
    ("captions.caption_dropout", lambda c: c.caption_dropout > 0, "captions are emptied by chance each step"),
    ("captions.caption_dropout_every_n_epochs", lambda c: c.caption_dropout_every_n_epochs > 0,
     "captions are emptied in some epochs"),
    ("captions.short_caption_chance", lambda c: c.short_caption_chance > 0, "most tags are dropped by chance"),
    ("captions.implication_dropout", lambda c: c.implication_dropout > 0, "implied tags are dropped by chance"),
    ("captions.wildcards", lambda c: c.wildcards, "{a|b} wildcards pick a different word each step"),
    ("captions.mix_tags", lambda c: c.mix_tags < 1.0, "tags and captions are mixed by chance each step"),
)


def text_encoders_trained(cfg) -> str | None:
    """The field that trains a text encoder (full fine-tune or adapter), or None when both stay frozen."""
    network = getattr(cfg, "network", None)
    if network is not None and getattr(network, "algo", "none") != "none":
        if getattr(network, "train_text_encoder", False):
            return "network.train_text_encoder"
        return None  # an adapter run trains the text encoders only through its own setting
    o = cfg.optimizer
    rates = [o.learning_rate_te1] + ([o.learning_rate_te2] if cfg.model.arch != "sd15" else [])
    if o.train_text_encoder and any((o.learning_rate if lr is None else lr) > 0 for lr in rates):
        return "optimizer.train_text_encoder"
    return None


def cache_problems(cfg) -> dict[str, str]:
    """``{FIELD: why}`` when the text-encoder cache is on but cannot be right for this config; else {}."""
    if getattr(cfg.data, "cache_text_encoder_outputs", "off") == "off":
        return {}
    trained = text_encoders_trained(cfg)
    if trained:
        return {FIELD: f"{trained} is on: a trained text encoder's output changes every step, so it cannot be "
                       "cached: turn the text-encoder cache off, or freeze the text encoders"}
    for field, on, why in VARYING:
        if on(cfg.captions):
            return {FIELD: f"{field} is on ({why}): a cached encoding would train one fixed caption instead: turn "
                           f"the text-encoder cache off, or {field.split('.')[1]} off"}
    return {}


def encoder_fingerprint(text_encoders: list, max_tokens: int, clip_skip: int) -> str:
    """Which encoders and text settings produced a cached output."""
    return weights_fingerprint(text_encoders, prefix=f"{max_tokens}/{clip_skip}")


class TextEncoderCache:
    """Text-encoder outputs by caption, in memory or one safetensors file per caption under ``folder``.

    ``encode(captions)`` returns what ``ModelFamily.encode_tokens`` returns for them (a dict of batched
    tensors on ``device``); a caption not cached yet (none, after ``fill``) is encoded and kept."""

    def __init__(self, family, tokenizers: list, text_encoders: list, device: torch.device,
                 folder: Path | None = None):
        self.family, self.tokenizers, self.text_encoders, self.device = family, tokenizers, text_encoders, device
        self.fingerprint = encoder_fingerprint(text_encoders, family.max_tokens, family.clip_skip)
        self.folder = Path(folder) / self.fingerprint if folder is not None else None
        self.memory: dict[str, dict[str, torch.Tensor]] = {}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(caption: str) -> str:
        return hashlib.sha256(caption.encode("utf-8")).hexdigest()[:32]

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def _encode_one(self, caption: str) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            out = self.family.encode_tokens(self.text_encoders,
                                            self.family.tokenize_captions(self.tokenizers, [caption]))
        return {name: tensor[0].detach().cpu().contiguous() for name, tensor in out.items()}

    def get(self, caption: str) -> dict[str, torch.Tensor]:
        key = self.key(caption)
        if key in self.memory:
            return self.memory[key]
        if self.folder is not None and self._path(key).exists():
            from safetensors.torch import load_file

            found = load_file(str(self._path(key)))
        else:
            found = self._encode_one(caption)
            if self.folder is not None:
                from safetensors.torch import save_file

                tmp = self._path(key).with_suffix(f".{os.getpid()}.tmp")  # GPU processes may write the same key
                save_file(found, str(tmp))
                tmp.replace(self._path(key))
        self.memory[key] = found
        return found

    def fill(self, captions: list[str], show_progress: bool = True) -> int:
        """Encode every distinct caption not cached yet (a progress bar for long lists); returns how many."""
        from tqdm.auto import tqdm

        todo = list(dict.fromkeys(c for c in captions if self.key(c) not in self.memory))
        for caption in tqdm(todo, desc="caching text encoder outputs", unit="caption",
                            disable=not show_progress or len(todo) < 2):
            self.get(caption)
        return len(todo)

    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]:
        rows = [self.get(c) for c in captions]
        return {name: torch.stack([r[name] for r in rows]).to(self.device) for name in rows[0]}


def dataset_captions(training_data) -> list[str]:
    """Every item's caption as the run will read it (fixed captions: any epoch and generator give the same)."""
    dataset = training_data.dataset
    return [dataset.captions(index, 0, random.Random(0)) for index in range(len(dataset))]


def build_text_encoder_cache(cfg, family, bundle, device: torch.device, stage_data: list,
                             cache_dir: Path | None, show_progress: bool = True) -> TextEncoderCache | None:
    """The run's cache (None when off), filled with every stage's captions; refuses a config it cannot serve."""
    mode = getattr(cfg.data, "cache_text_encoder_outputs", "off")
    if mode == "off":
        return None
    problems = cache_problems(cfg)
    if problems:
        from helpers.config import ConfigError

        raise ConfigError(problems)
    folder = Path(cache_dir) / "text_encoder_outputs" if mode == "disk" and cache_dir is not None else None
    cache = TextEncoderCache(family, bundle.tokenizers, bundle.text_encoders, device, folder)
    for data in {id(d): d for d in stage_data}.values():
        cache.fill(dataset_captions(data), show_progress)
    return cache
