"""Validation loss during training: the loss on held-out images, with fixed noise and fixed timesteps.

The one metric there is before any image is generated. A slice of the dataset (a fraction or a count, drawn
with a fixed seed from the images ``helpers.dataset.files`` lists), or a separate folder, is **held out**: the
data module leaves those images out of training (``build_training_data(..., exclude=...)``). Every
``every_n_steps`` optimizer steps (and at step 0 and the last step) each held-out image is noised at the same
``timesteps`` timesteps spread evenly over the trained range, with the same noise each time (seeded by the
validation seed, the image and the timestep), and the loop's own loss (``loop.denoising_loss``: the same target,
weighting, Huber and mask as training) is averaged over them in eval mode without gradients. So the number moves
only when the model does (as OneTrainer's validation concepts do: fixed seed, deterministic timesteps).
Every random generator is restored afterwards, so a run with validation trains bit for bit like one without.
Cost: a round is held-out images × ``timesteps`` forward passes without a backward pass (about a third of a
training step's work per image), e.g. 10 images × 4 timesteps every 100 steps at batch 4 ≈ 3 % of the run
(tiny demo on a CPU: 0.29 s a round for 2 images × 4 timesteps beside 0.19 s a training step at batch 2).

The result is a ``validation`` line in ``log.jsonl`` (``progress.RunMonitor.validation``), ``validation/loss``
in TensorBoard / W&B, and a second curve beside the training loss in the notebook monitor. A resumed run
appends to the same log, so the history continues.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from helpers.config import ConfigError, option
from helpers.dataset.files import dataset_entries
from helpers.training.checkpoints import capture_rng_states, restore_rng_states
from helpers.training.data import TrainingData, build_training_data, seed_for

MIN_TRAINING_IMAGES = 4  # a held-out slice may not leave fewer images than this to train on


@dataclass
class ValidationConfig:
    """Loss on held-out images with fixed noise and timesteps, logged every N steps (off by default)."""

    enabled: bool = option(False, help="hold out some images and log their loss every N steps (the held-out "
                           "images are not trained on)")
    holdout_fraction: float = option(0.1, min=0.0, max=0.5, help="share of the dataset's images held out "
                                     "(at least one); ignored when holdout_count or folder is set")
    holdout_count: int = option(0, min=0, max=100_000, help="number of images held out (0 = use "
                                "holdout_fraction)")
    folder: str = option("", help="a separate folder of validation images (then nothing is held out of the "
                         "dataset)", kind="path", group="advanced")
    every_n_steps: int = option(100, min=1, max=10_000_000, help="compute the validation loss every N optimizer "
                                "steps (and at the first and last step)")
    timesteps: int = option(4, min=1, max=100, help="fixed timesteps per image, spread evenly over the trained "
                            "range (more = steadier number, slower)", group="advanced")
    seed: int = option(1234, min=0, max=2**31 - 1, help="chooses the held-out images and fixes their noise",
                       group="advanced")

    def problems(self, image_count: int | None = None) -> dict[str, str]:
        """Field problems (keys without the ``validation.`` prefix); ``image_count`` = images in the dataset,
        when known, to refuse a slice that would leave too few to train on."""
        if not self.enabled or self.folder:
            return {}
        out: dict[str, str] = {}
        if not self.holdout_count and self.holdout_fraction <= 0:
            out["holdout_fraction"] = "must be above 0 (or set holdout_count, or a validation folder)"
        elif image_count is not None:
            held = holdout_size(image_count, self)
            if image_count - held < MIN_TRAINING_IMAGES:
                key = "holdout_count" if self.holdout_count else "holdout_fraction"
                out[key] = (f"holding out {held} of {image_count} images leaves {image_count - held} to train on "
                            f"(fewer than {MIN_TRAINING_IMAGES}): add images, give a separate validation folder, "
                            "or turn validation off for a set this small")
        return out


def holdout_size(image_count: int, cfg: ValidationConfig) -> int:
    """How many of ``image_count`` images are held out: the count, else the fraction rounded (at least one)."""
    if cfg.holdout_count:
        return min(cfg.holdout_count, image_count)
    return min(image_count, max(1, round(cfg.holdout_fraction * image_count)))


def held_out_images(root: Path, cfg: ValidationConfig, *, caption_ext: str = ".txt",
                    default_repeats: int = 1) -> list[str]:
    """The held-out images of the dataset at ``root`` (paths relative to it, POSIX, sorted): drawn with
    ``cfg.seed`` from the images training reads; none when validation is off or uses its own folder.
    Raises ``ConfigError`` naming the field when too few images would be left to train on."""
    if not cfg.enabled or cfg.folder:
        return []
    entries, _ = dataset_entries(root, caption_ext=caption_ext, default_repeats=default_repeats)
    names = [e.path.relative_to(root).as_posix() for e in entries]
    found = cfg.problems(len(names))
    if found:
        raise ConfigError({f"validation.{k}": v for k, v in found.items()})
    return sorted(random.Random(cfg.seed).sample(names, holdout_size(len(names), cfg)))


def validation_folder(cfg: ValidationConfig, resolve) -> Path | None:
    """The separate validation folder (``resolve`` turns a workspace dataset name into a path), checked before
    any model is loaded; None when validation is off or holds part of the dataset out."""
    if not cfg.enabled or not cfg.folder:
        return None
    folder = Path(resolve(cfg.folder))
    if not folder.is_dir():
        raise ConfigError({"validation.folder": f"{cfg.folder}: no such folder: give a folder of validation "
                           "images with captions (or a dataset name), or leave it empty to hold out part of "
                           "the dataset"})
    return folder


def dataset_image_count(cfg: ValidationConfig, data) -> int | None:
    """Images in the dataset folder of ``data`` (a ``DataConfig``) when validation holds some out of it and the
    folder exists (a dataset given by workspace name is counted when training starts)."""
    root = Path(data.dataset).expanduser() if data.dataset else None
    if not cfg.enabled or cfg.folder or root is None or not root.is_dir():
        return None
    return len(dataset_entries(root, caption_ext=data.caption_extension, default_repeats=data.repeats)[0])


def held_out_of(cfg, root: Path) -> list[str]:
    """``held_out_images`` for a ``TrainConfig`` and its resolved dataset folder (none for a missing folder: the
    dataset scan says what is wrong with it)."""
    d = cfg.data
    return held_out_images(root, cfg.validation, caption_ext=d.caption_extension,
                           default_repeats=d.repeats) if Path(root).is_dir() else []


def fixed_timesteps(count: int, low: int, high: int) -> list[int]:
    """``count`` timesteps spread evenly over [low, high): the middle of each of ``count`` equal parts."""
    return [low + int((k + 0.5) * (high - low) / count) for k in range(count)]


class ValidationSet:
    """The held-out images (latents cached once) and what is needed to compute their loss again and again."""

    def __init__(self, data: TrainingData, cfg: ValidationConfig, timesteps: list[int]):
        self.data, self.cfg, self.timesteps = data, cfg, timesteps
        self.batches = data.batches(0)  # one fixed order and crop; the seeds in it are the validation seed's
        self.images = len(data.dataset)

    def due(self, step: int, total_steps: int) -> bool:
        return step == 0 or step >= total_steps or step % self.cfg.every_n_steps == 0

    def loss(self, loss_fn: Callable[[dict, torch.Tensor, torch.Tensor], torch.Tensor],
             models: list[torch.nn.Module], device: torch.device) -> dict:
        """Mean loss over every held-out image × fixed timestep, and the mean per timestep. ``loss_fn(batch,
        noise, timesteps)`` is the loop's denoising loss (mean over the batch). Models in eval mode, no grad,
        every RNG as it was before."""
        states, modes = capture_rng_states(), [m.training for m in models]
        sums, count = [0.0] * len(self.timesteps), 0
        try:
            for m in models:
                m.eval()
            with torch.no_grad():
                for batch in self.data.loader(self.batches):
                    latents, n = batch["latents"], len(batch["captions"])
                    for k, t in enumerate(self.timesteps):
                        noise = torch.stack([
                            torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(
                                seed_for(self.cfg.seed, seed, k))) for seed in batch["seeds"]]).to(device)
                        value = loss_fn(batch, noise, torch.full((n,), t, dtype=torch.long, device=device))
                        sums[k] += float(value) * n
                    count += n
        finally:
            for m, mode in zip(models, modes, strict=True):
                m.train(mode)
            restore_rng_states(states)
        by_timestep = [s / count for s in sums]
        return {"loss": sum(by_timestep) / len(by_timestep), "images": count, "timesteps": self.timesteps,
                "by_timestep": [round(v, 6) for v in by_timestep]}


def build_validation_set(cfg, root: Path, held_out: list[str], *, folder: Path | None, encode,
                         show_progress: bool = False) -> ValidationSet | None:
    """The validation set of ``cfg`` (a ``TrainConfig``): the held-out images of ``root`` or every image of
    ``folder``, at the training resolution without augmentation, captions as written, latents encoded once."""
    v = cfg.validation
    if not v.enabled:
        return None
    plain = dataclasses.replace(cfg.data, random_crop=False, flip=False, color_jitter=0.0, hue_jitter=0.0,
                                cache_latents="memory", num_workers=0, persistent_workers=False)
    data = build_training_data(plain, folder or root, batch_size=cfg.batch_size, seed=v.seed, encode=encode,
                               show_progress=show_progress, only=None if folder else held_out)
    o = cfg.objective
    return ValidationSet(data, v, fixed_timesteps(v.timesteps, o.min_timestep, o.max_timestep))
