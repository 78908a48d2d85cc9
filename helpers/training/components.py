"""The trainer's seam to model I/O and model families: load the base model, pick what trains, save results.

Loading and saving belong to ``helpers.models`` (``load_model``, ``save_single_file``); family differences
(text encoding, size conditioning) to ``helpers.models.sdxl`` / ``sd15``. This module resolves a base-model
name, puts models in the right dtype/mode for training and returns the family adapter, so the loop never
asks which family it trains.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "no": torch.float32}


def resolve_base_model(name: str, models_dir: Path | None) -> str:
    """A path that exists, a model in the workspace's ``models/``, or (left as is) a Hub repo id."""
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if models_dir is not None and (models_dir / name).exists():
        return str(models_dir / name)
    return name


@dataclass(frozen=True)
class ModelFamily:
    """A family module (``helpers.models.sdxl`` / ``sd15``) with the run's text settings bound: the loop calls
    ``tokenize_captions``, ``encode_tokens`` and ``unet_conditioning`` without knowing which family it trains."""

    module: types.ModuleType
    max_tokens: int = 75
    clip_skip: int = 1

    @property
    def arch(self) -> str:
        return self.module.ARCH

    def tokenize_captions(self, tokenizers: list, captions: list[str]) -> list[torch.Tensor]:
        return self.module.tokenize_captions(tokenizers, captions, self.max_tokens)

    def encode_tokens(self, text_encoders: list, token_ids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.clip_skip == 1:
            return self.module.encode_tokens(text_encoders, token_ids)
        return self.module.encode_tokens(text_encoders, token_ids, clip_skip=self.clip_skip)

    def unet_conditioning(self, *args, **kwargs) -> dict:
        return self.module.unet_conditioning(*args, **kwargs)


def model_family(arch: str, *, max_tokens: int = 75, clip_skip: int = 1) -> ModelFamily:
    """The family adapter for ``arch`` with the caption token limit and clip skip of the run.

    Clip skip is an SD 1.5 setting: SDXL already reads TE1's penultimate layer (``ConfigError`` otherwise,
    where kohya only warns and ignores it).
    """
    from helpers.config import ConfigError
    from helpers.models import sd15, sdxl

    families = {"sdxl": sdxl, "sd15": sd15}
    if arch not in families:
        raise ValueError(f"unknown model family {arch!r}: expected one of {', '.join(families)}")
    if clip_skip != 1 and arch != "sd15":
        raise ConfigError({"captions.clip_skip": f"clip skip is for SD 1.5; this {arch} model already reads the "
                           "penultimate layer: set clip_skip = 1"})
    return ModelFamily(families[arch], max_tokens, clip_skip)


def load_base_model(source: str, *, arch: str | None, prediction: str | None, allow_pickle: bool):
    """A ``ModelBundle`` (arch, prediction, unet, vae, text_encoders, tokenizers, noise_scheduler) in fp32 on CPU."""
    from helpers import models

    return models.load_model(source, arch=arch, prediction=prediction, dtype=torch.float32, device="cpu",
                             allow_pickle=allow_pickle)


@dataclass
class TrainedModels:
    """Which models train, with their learning rates, and the names their weights are saved under."""

    modules: dict[str, torch.nn.Module] = field(default_factory=dict)
    learning_rates: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name, module in self.modules.items() for k, v in module.state_dict().items()}

    def load_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        for name, module in self.modules.items():
            prefix = f"{name}."
            part = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
            if not part:
                raise ValueError(f"the training state holds no weights for {name}: it was saved by a run that "
                                 f"did not train {name}")
            module.load_state_dict(part, strict=True)

    def parameter_groups(self) -> list[dict]:
        return [{"params": [p for p in module.parameters() if p.requires_grad], "lr": self.learning_rates[name],
                 "name": name} for name, module in self.modules.items()]


def choose_trained_models(bundle, *, unet_lr: float, train_text_encoder: bool, te_lrs: list[float | None]
                          ) -> TrainedModels:
    """The U-Net always; each text encoder when text-encoder training is on and its LR is not 0.

    A text-encoder LR of None means "same as the U-Net". Frozen models get ``requires_grad_(False)``.
    """
    trained = TrainedModels()
    bundle.vae.requires_grad_(False)
    trained.modules["unet"], trained.learning_rates["unet"] = bundle.unet, unet_lr
    bundle.unet.requires_grad_(True)
    for index, te in enumerate(bundle.text_encoders):
        lr = te_lrs[index] if index < len(te_lrs) and te_lrs[index] is not None else unet_lr
        train = train_text_encoder and lr > 0
        te.requires_grad_(train)
        if train:
            trained.modules[f"te{index + 1}"], trained.learning_rates[f"te{index + 1}"] = te, lr
    return trained


def prepare_models(bundle, trained: TrainedModels, *, device: torch.device, weight_dtype: torch.dtype,
                   frozen_dtype: torch.dtype, vae_dtype: torch.dtype, gradient_checkpointing: bool,
                   attention: str) -> None:
    """Move models to the device and dtypes: trained ones in ``weight_dtype`` (fp32 unless full fp16/bf16),
    frozen text encoders in ``frozen_dtype`` (the mixed-precision dtype: they only run forward)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    place(bundle.vae, device, vae_dtype).eval()
    bundle.unet.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())
    for name, te in zip(("te1", "te2"), bundle.text_encoders, strict=False):
        place(te, device, weight_dtype if name in trained.modules else frozen_dtype).train(name in trained.modules)
    place(bundle.unet, device, weight_dtype).train()
    for name, module in trained.modules.items():
        if gradient_checkpointing:
            if name == "unet":
                module.enable_gradient_checkpointing()
            else:
                module.gradient_checkpointing_enable()


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move a model, casting only when its dtype differs (diffusers warns on every no-op cast)."""
    current = next(module.parameters()).dtype
    return module.to(device) if current == dtype else module.to(device, dtype)


def encode_pixels(vae, pixels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """VAE latents × scaling factor, one seeded sample per image (so a latent depends only on its seed)."""
    dtype, device = vae.dtype, vae.device
    with torch.no_grad():
        dist = vae.encode(pixels.to(device, dtype)).latent_dist
        noise = torch.stack([torch.randn(dist.mean.shape[1:], generator=torch.Generator().manual_seed(s))
                             for s in seeds]).to(device, dist.mean.dtype)
        latents = dist.mean + dist.std * noise
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latents - shift) * vae.config.scaling_factor).float()


def save_model_file(path: Path, bundle, *, precision: str, metadata: dict[str, str]) -> Path:
    """The whole model (trained and frozen parts) as one original-layout safetensors file."""
    from helpers.models import save_single_file

    return save_single_file(bundle.unet, bundle.vae, bundle.text_encoders, path, arch=bundle.arch,
                            precision=precision, metadata=metadata, prediction=bundle.prediction)


def weights_fingerprint(models: list, prefix: str = "") -> str:
    """Which weights made a cache entry: sha256 of ``prefix``, each model's config and its first four tensors
    (first 16 hex digits). Keys the latent cache (the VAE) and the text-encoder output cache."""
    import hashlib

    h = hashlib.sha256(prefix.encode())
    for model in models:
        config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
        h.update(repr(sorted(config.items())).encode())
        for name, tensor in list(model.state_dict().items())[:4]:
            h.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
