"""Training data: images + captions -> one-bucket batches of pixels (or cached latents) with SDXL size info.

Reads the dataset through ``helpers.dataset.files`` (the layout the dataset check uses too: kohya ``N_name``
folders = N repeats, captions, bad files reported) and places images in ``helpers.dataset.buckets``' aspect
ratio buckets; owns resize/crop/flip/colour jitter, the per-epoch batch plan, loss masks (``training.masks``)
and the latent cache (memory or disk, keyed by image content, bucket, crop, flip and VAE). The per-step
caption edits live in ``training.captions``.

Every random choice (batch order, crop, flip, caption edits) comes from a generator seeded by
(seed, epoch, position), never from global state, so an epoch is a pure function of its number: a resumed run
skips the batches it already did and sees exactly what an uninterrupted run would have seen, whatever the
number of loader workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from helpers.config import option
from helpers.dataset.buckets import make_buckets, select_bucket
from helpers.dataset.caption_files import CaptionError
from helpers.dataset.files import IMAGE_EXTENSIONS, dataset_entries, read_image_size
from helpers.training.augment import ColorJitter, apply_color_jitter, draw_color_jitter
from helpers.training.captions import CaptionConfig, CaptionPipeline, build_caption_pipeline, no_flip_images
from helpers.training.implications import ImplicationError
from helpers.training.masks import find_mask_files, load_mask, mask_folder_path


@dataclass
class DataConfig:
    """Where the images are and how they become batches."""

    dataset: str = option("", help="dataset folder, or the name of a dataset in the workspace", kind="path")
    caption_extension: str = option(".txt", help="caption file next to each image: <image stem><extension>",
                                    group="advanced")
    repeats: int = option(1, min=1, max=1000, help="repeats for images not in a kohya 'N_name' folder "
                          "(an 'N_name' folder repeats its images N times)")
    resolution: int = option(1024, min=64, max=4096, step=64, unit="px",
                             help="training area = resolution²: 1024 for SDXL, 512 for SD 1.5")
    enable_buckets: bool = option(True, help="aspect-ratio buckets; off = every image cropped to a square")
    min_bucket_side: int = option(256, min=32, max=4096, unit="px", help="smallest bucket side", group="advanced")
    max_bucket_side: int = option(2048, min=64, max=8192, unit="px",
                                  help="largest bucket side (kohya's default 1024 caps SDXL buckets at 1024)",
                                  group="advanced")
    bucket_step: int = option(64, min=8, max=256, unit="px", help="bucket sides are multiples of this",
                              group="advanced")
    no_upscale: bool = option(False, help="never upscale small images; their bucket is their own size "
                              "rounded down to the step", group="advanced")
    random_crop: bool = option(False, help="crop jitter: a new random crop each time (no latent cache)")
    flip: bool = option(False, help="random horizontal flip")
    no_flip_tags: list[str] = option([], help="never flip an image whose caption has one of these tags (text, "
                                     "asymmetric features; hyperfusion: sequence, text on*, speech bubble ...); "
                                     "* matches any text", group="augmentation")
    color_jitter: float = option(0.0, min=0.0, max=0.5, help="random brightness, contrast and saturation change "
                                 "of up to this much (0.1 = ±10 %; no latent cache)", group="augmentation")
    hue_jitter: float = option(0.0, min=0.0, max=0.5, help="random hue shift of up to this share of the colour "
                               "circle (kohya color_aug ≈ 0.044; no latent cache)", group="augmentation")
    cache_latents: Literal["off", "memory", "disk"] = option(
        "off", help="encode every image once before training (not with random crop); disk keeps them for the "
        "next run")
    cache_text_encoder_outputs: Literal["off", "memory", "disk"] = option(
        "off", help="encode each caption once before training (frozen text encoders and captions that never "
        "change: no shuffle, dropout or wildcards; training.te_cache); disk keeps them for the next run")
    on_bad_data: Literal["skip", "stop"] = option("skip", help="a corrupt image or unreadable caption: skip it "
                                                  "(listed in the report) or stop before training")
    num_workers: int = option(2, min=0, max=64, help="image loader processes", group="advanced")
    persistent_workers: bool = option(False, help="keep the loader processes from epoch to epoch instead of "
                                      "starting them again each epoch (kohya persistent_data_loader_workers)",
                                      group="advanced")
    masks: Literal["off", "alpha", "folder"] = option(
        "off", help="masked loss: train only where the mask is white: the image's alpha channel, or a mask "
        "image per training image in mask_folder", group="advanced")
    mask_folder: str = option("_masks", help="mask images, same relative path and name as each training "
                              "image (relative to the dataset folder)", group="advanced")


class DataError(ValueError):
    """The dataset cannot be used as it is; the message names the files and what to do."""


# ---------------------------------------------------------------- scan


@dataclass
class ImageItem:
    path: Path
    caption: str
    repeats: int
    width: int
    height: int


@dataclass
class DatasetReport:
    """What the scan found: counts, and every file that was skipped or looks wrong."""

    images: int = 0
    samples_per_epoch: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    empty_captions: list[str] = field(default_factory=list)
    missing_captions: list[str] = field(default_factory=list)
    multiline_captions: list[str] = field(default_factory=list)
    ignored_folders: list[str] = field(default_factory=list)
    buckets: dict[str, int] = field(default_factory=dict)
    held_out: list[str] = field(default_factory=list)  # left out for validation (``training.validation``)

    def summary(self) -> str:
        lines = [f"{self.images} images, {self.samples_per_epoch} samples per epoch (with repeats), "
                 f"{len(self.buckets)} buckets"]
        if self.skipped:
            lines.append(f"{len(self.skipped)} skipped: " + "; ".join(f"{p} ({why})" for p, why in self.skipped[:5])
                         + (" ..." if len(self.skipped) > 5 else ""))
        if self.missing_captions:
            lines.append(f"{len(self.missing_captions)} without a caption file (folder name used as caption): "
                         + ", ".join(self.missing_captions[:5]))
        if self.empty_captions:
            lines.append(f"{len(self.empty_captions)} with an empty caption: " + ", ".join(self.empty_captions[:5]))
        if self.multiline_captions:
            lines.append(f"{len(self.multiline_captions)} captions with more than one line (only the first is "
                         "trained): " + ", ".join(self.multiline_captions[:5]))
        if self.ignored_folders:
            lines.append("ignored folders: " + ", ".join(self.ignored_folders))
        if self.held_out:
            lines.append(f"{len(self.held_out)} held out for the validation loss (not trained on): "
                         + ", ".join(self.held_out[:5]) + (" ..." if len(self.held_out) > 5 else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def scan_dataset(root: str | Path, *, caption_extension: str = ".txt", default_repeats: int = 1,
                 on_bad_data: str = "skip", exclude: Collection[str] = (),
                 only: Collection[str] | None = None) -> tuple[list[ImageItem], DatasetReport]:
    """Find images and captions under ``root`` (the layout rules of ``helpers.dataset.files``, which the dataset
    check uses too), reading each image's size.

    Images in no ``N_name`` folder repeat ``default_repeats`` times; an ``N_name`` folder repeats N times and its
    ``name`` is the caption of images without a caption file. Corrupt images and non-UTF-8 captions are skipped
    with a reason, or raise ``DataError`` when ``on_bad_data == "stop"``. ``exclude`` (held out for validation)
    and ``only`` (the validation set itself) are image paths relative to ``root``, POSIX style.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}: give a folder of images with .txt captions")
    report = DatasetReport()
    entries, report.ignored_folders = dataset_entries(root, caption_ext=caption_extension,
                                                      default_repeats=default_repeats)
    if exclude or only is not None:
        keep = [e for e in entries if e.path.relative_to(root).as_posix() not in exclude
                and (only is None or e.path.relative_to(root).as_posix() in only)]
        report.held_out = sorted(set(exclude) & {e.path.relative_to(root).as_posix() for e in entries})
        entries = keep
    items: list[ImageItem] = []
    for entry in entries:
        rel = str(entry.path.relative_to(root))
        problem = entry.caption_problem if entry.caption is None else ""
        if not problem:
            try:
                width, height = read_image_size(entry.path)
            except Exception as exc:  # PIL raises many types for broken files
                problem = f"not a readable image ({type(exc).__name__}: {exc})"
        if problem:
            if on_bad_data == "stop":
                raise DataError(f"{entry.path}: {problem}: fix or remove it, or set on_bad_data = 'skip'")
            report.skipped.append((rel, problem))
            continue
        {"missing": report.missing_captions, "empty": report.empty_captions,
         "multiline": report.multiline_captions}.get(entry.caption_problem, []).append(rel)
        items.append(ImageItem(entry.path, entry.caption, entry.repeats, width, height))
    report.images = len(items)
    report.samples_per_epoch = sum(i.repeats for i in items)
    if not items:
        raise DataError(f"no usable images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})"
                        + (f"; skipped: {report.skipped[:3]}" if report.skipped else ""))
    return items, report


# ---------------------------------------------------------------- buckets


def assign_buckets(items: list[ImageItem], *, resolution: int, enable_buckets: bool, min_side: int,
                   max_side: int, step: int, no_upscale: bool) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(bucket, resized size) per item."""
    if not enable_buckets:
        square = [(resolution, resolution)]
        return [select_bucket(i.width, i.height, square, resolution=resolution, step=step) for i in items]
    buckets = None if no_upscale else make_buckets(resolution, min_side, max_side, step)
    out = []
    for item in items:
        bucket, resized = select_bucket(item.width, item.height, buckets, resolution=resolution, step=step)
        if min(bucket) < step:
            raise DataError(f"{item.path}: {item.width}×{item.height} is smaller than one bucket step "
                            f"({step} px): remove it or turn off no_upscale")
        out.append((bucket, resized))
    return out


# ---------------------------------------------------------------- per-epoch plan


def seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions, unlike hash())."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class Sample:
    """One element of a batch: which item, and where in the run it is (for its random choices)."""

    epoch: int
    position: int
    item: int


def plan_epoch(bucket_of_item: list[tuple[int, int]], repeats: list[int], batch_size: int, seed: int,
               epoch: int, world_size: int = 1, rank: int = 0) -> list[list[Sample]]:
    """The batches of one epoch for one process: every item ``repeats`` times, batches from one bucket.

    Kohya semantics: samples shuffled within each bucket, cut into batches (the last one of a bucket may be
    short), batch order shuffled. With several processes each takes every ``world_size``-th batch (the
    tail that does not divide evenly is dropped so all processes step together).
    """
    rng = random.Random(seed_for(seed, epoch))
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, (bucket, count) in enumerate(zip(bucket_of_item, repeats, strict=True)):
        by_bucket.setdefault(bucket, []).extend([index] * count)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        rng.shuffle(members)
        batches += [members[i:i + batch_size] for i in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    batches = batches[:len(batches) - len(batches) % world_size]
    out, position = [], 0
    for batch in batches:
        out.append([Sample(epoch, position + j, item) for j, item in enumerate(batch)])
        position += len(batch)
    return out[rank::world_size]


# ---------------------------------------------------------------- images


def crop_box(resized: tuple[int, int], bucket: tuple[int, int], random_crop: bool,
             rng: random.Random) -> tuple[int, int]:
    """(left, top) of the bucket-sized crop in the resized image: centered, or uniform when random."""
    free_x, free_y = resized[0] - bucket[0], resized[1] - bucket[1]
    if random_crop:
        return rng.randint(0, free_x), rng.randint(0, free_y)
    return free_x // 2, free_y // 2


def load_pixels(path: Path, resized: tuple[int, int], bucket: tuple[int, int], left: int, top: int,
                flip: bool, jitter: ColorJitter | None = None) -> torch.Tensor:
    """Decode -> RGB -> resize -> crop -> flip -> colour jitter -> float tensor (3, H, W) in [-1, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", resized)  # decode at the smallest 1/n scale still ≥ the target: much faster
        if im.mode in ("RGBA", "LA", "P", "PA"):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)  # transparent areas become white, as taggers see them
        im = im.convert("RGB")
        if im.size != resized:
            im = im.resize(resized, Image.Resampling.LANCZOS, reducing_gap=3.0)
        im = im.crop((left, top, left + bucket[0], top + bucket[1]))
        if flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if jitter is not None:
            im = apply_color_jitter(im, jitter)
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    pixels = data.view(bucket[1], bucket[0], 3).permute(2, 0, 1)
    return pixels.float().div_(127.5).sub_(1.0)


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits): the latent cache key of an image."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class TrainingImages(torch.utils.data.Dataset):
    """Map-style dataset indexed by ``Sample``: returns pixels (or a cached latent) with its conditioning."""

    def __init__(self, items: list[ImageItem], placement: list[tuple[tuple[int, int], tuple[int, int]]], *,
                 seed: int, random_crop: bool, flip: bool, captions: CaptionPipeline,
                 no_flip: list[bool] | None = None, color_jitter: float = 0.0, hue_jitter: float = 0.0,
                 latents: LatentStore | None = None, masks: list[Path] | None = None, alpha_masks: bool = False):
        self.items, self.placement, self.seed = items, placement, seed
        self.random_crop, self.flip, self.captions = random_crop, flip, captions
        self.no_flip = no_flip or [False] * len(items)
        self.color_jitter, self.hue_jitter = color_jitter, hue_jitter
        self.latents = latents
        self.masks, self.alpha_masks = masks, alpha_masks  # mask file per item (training.masks), or None

    def __len__(self) -> int:
        return len(self.items)

    def choices(self, sample: Sample) -> tuple[int, int, bool, ColorJitter | None, random.Random]:
        """The random choices of one sample (crop, flip, colour jitter) and the rng left for its caption."""
        rng = random.Random(seed_for(self.seed, sample.epoch, sample.position))
        bucket, resized = self.placement[sample.item]
        left, top = crop_box(resized, bucket, self.random_crop, rng)
        flip = self.flip and rng.random() < 0.5 and not self.no_flip[sample.item]
        jitter = draw_color_jitter(rng, self.color_jitter, self.hue_jitter)
        return left, top, flip, jitter, rng

    def __getitem__(self, sample: Sample) -> dict:
        item = self.items[sample.item]
        bucket, resized = self.placement[sample.item]
        left, top, flip, jitter, rng = self.choices(sample)
        out = {"caption": self.captions(sample.item, sample.epoch, rng),
               "original_size": (item.height, item.width),
               # SDXL conditions on the crop in the resized image; mirrored when the crop is flipped
               "crop_top_left": (top, resized[0] - left - bucket[0] if flip else left),
               "target_size": (bucket[1], bucket[0]),
               "seed": seed_for(self.seed, sample.epoch, sample.position, 1)}
        if self.masks is not None:
            out["mask"] = load_mask(self.masks[sample.item], resized, bucket, left, top, flip, self.alpha_masks)
        if self.latents is not None:
            out["latents"] = self.latents.get(latent_key(self.latents.digests[sample.item], bucket, left, top, flip))
        else:
            try:
                out["pixels"] = load_pixels(item.path, resized, bucket, left, top, flip, jitter)
            except Exception as exc:
                raise DataError(f"{item.path}: could not be read during training ({type(exc).__name__}: {exc}); "
                                "it changed since the scan: restore it, or remove it and resume") from None
        return out


def collate_samples(samples: list[dict]) -> dict:
    """Stack one bucket's samples into a batch."""
    batch = {"captions": [s["caption"] for s in samples],
             "original_sizes": torch.tensor([s["original_size"] for s in samples]),
             "crop_top_lefts": torch.tensor([s["crop_top_left"] for s in samples]),
             "target_sizes": torch.tensor([s["target_size"] for s in samples]),
             "seeds": [s["seed"] for s in samples]}
    key = "latents" if "latents" in samples[0] else "pixels"
    batch[key] = torch.stack([s[key] for s in samples])
    if "mask" in samples[0]:
        batch["masks"] = torch.stack([s["mask"] for s in samples])
    return batch


# ---------------------------------------------------------------- latent cache


def latent_key(digest: str, bucket: tuple[int, int], left: int, top: int, flip: bool) -> str:
    return f"{digest}_{bucket[0]}x{bucket[1]}_{left}_{top}_{int(flip)}"


class LatentStore:
    """Encoded latents by key, in memory or as one safetensors file per key under ``folder``."""

    def __init__(self, digests: list[str], folder: Path | None = None):
        self.digests, self.folder = digests, folder
        self.memory: dict[str, torch.Tensor] = {}
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return key in self.memory or (self.folder is not None and self.path(key).exists())

    def put(self, key: str, latent: torch.Tensor) -> None:
        latent = latent.detach().to("cpu", torch.float32).contiguous()
        if self.folder is None:
            self.memory[key] = latent
            return
        from safetensors.torch import save_file

        tmp = self.path(key).with_suffix(f".{os.getpid()}.tmp")  # several GPU processes may cache the same key
        save_file({"latent": latent}, str(tmp))
        tmp.replace(self.path(key))

    def get(self, key: str) -> torch.Tensor:
        if key in self.memory:
            return self.memory[key]
        from safetensors.torch import load_file

        return load_file(str(self.path(key)))["latent"]


def fill_latent_cache(dataset: TrainingImages, store: LatentStore, encode: Callable[[torch.Tensor, int], torch.Tensor],
                      flip: bool, show_progress: bool = True) -> int:
    """Encode every (image, flip) the run can ask for and is not cached yet; returns how many were encoded.

    ``encode(pixels (1,3,H,W), seed) -> latent (1,4,h,w)``; the seed comes from the key, so a cached latent
    is the same whichever run or process made it. Crops are fixed (centered) when caching is allowed.
    """
    from tqdm.auto import tqdm

    todo = []
    for index, item in enumerate(dataset.items):
        bucket, resized = dataset.placement[index]
        left, top = crop_box(resized, bucket, False, random.Random(0))
        for flipped in ((False, True) if flip and not dataset.no_flip[index] else (False,)):
            key = latent_key(store.digests[index], bucket, left, top, flipped)
            if not store.has(key):
                todo.append((key, item.path, resized, bucket, left, top, flipped))
    for key, path, resized, bucket, left, top, flipped in tqdm(todo, desc="caching latents", unit="img",
                                                               disable=not show_progress or not todo):
        pixels = load_pixels(path, resized, bucket, left, top, flipped)[None]
        store.put(key, encode(pixels, int(hashlib.sha256(key.encode()).hexdigest()[:15], 16))[0])
    return len(todo)


# ---------------------------------------------------------------- assembled


@dataclass
class TrainingData:
    """The scanned dataset with its buckets: gives each epoch's batches and a loader over any of them."""

    dataset: TrainingImages
    report: DatasetReport
    repeats: list[int]
    batch_size: int
    seed: int
    num_workers: int = 0
    world_size: int = 1
    rank: int = 0
    persistent_workers: bool = False
    _persistent: tuple[torch.utils.data.DataLoader, EpochBatches] | None = field(default=None, init=False, repr=False)

    def batches(self, epoch: int) -> list[list[Sample]]:
        return plan_epoch([b for b, _ in self.dataset.placement], self.repeats, self.batch_size, self.seed, epoch,
                          self.world_size, self.rank)

    def loader(self, batches: list[list[Sample]]) -> torch.utils.data.DataLoader:
        """Loads exactly these batches, in this order (workers prefetch; order is kept).

        With persistent workers one loader serves every epoch: its batch list is swapped, its worker processes
        stay (a sample's content never depends on which process loads it).
        """
        if self.persistent_workers and self.num_workers:
            if self._persistent is None:
                plan = EpochBatches()
                self._persistent = (torch.utils.data.DataLoader(
                    self.dataset, batch_sampler=plan, collate_fn=collate_samples, num_workers=self.num_workers,
                    persistent_workers=True, prefetch_factor=4), plan)
            loader, plan = self._persistent
            plan.batches = batches
            return loader
        workers = min(self.num_workers, len(batches))
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, collate_fn=collate_samples,
                                           num_workers=workers, persistent_workers=False,
                                           prefetch_factor=4 if workers else None)


class EpochBatches:
    """A batch sampler whose batches the trainer replaces each epoch (for a loader that outlives one epoch)."""

    def __init__(self):
        self.batches: list[list[Sample]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def find_masks(items: list[ImageItem], root: Path, source: str, folder: str) -> list[Path] | None:
    """The mask file of every item (``training.masks``), None when masks are off; a missing one stops the run."""
    if source == "off":
        return None
    found, missing = find_mask_files([i.path for i in items], Path(root), source, folder)
    if missing:
        raise DataError(f"{len(missing)} image(s) have no mask in {mask_folder_path(Path(root), folder)} (same "
                        f"relative path and name, e.g. {', '.join(str(p) for p in missing[:3])}): add them, or set "
                        "data.masks = 'off'")
    return found


def build_training_data(cfg: DataConfig, root: Path, *, batch_size: int, seed: int, world_size: int = 1,
                        rank: int = 0, cache_folder: Path | None = None,
                        encode: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
                        show_progress: bool = True, captions: CaptionConfig | None = None,
                        exclude: Collection[str] = (), only: Collection[str] | None = None) -> TrainingData:
    """Scan ``root``, assign buckets, set up the per-step captions (``captions``, default: as written), and
    (when ``cfg.cache_latents`` is on) encode latents with ``encode``. ``exclude``: images held out for
    validation (relative paths), never trained on; ``only``: just these images (the validation set)."""
    items, report = scan_dataset(root, caption_extension=cfg.caption_extension, default_repeats=cfg.repeats,
                                 on_bad_data=cfg.on_bad_data, exclude=frozenset(exclude),
                                 only=None if only is None else frozenset(only))
    placement = assign_buckets(items, resolution=cfg.resolution, enable_buckets=cfg.enable_buckets,
                               min_side=cfg.min_bucket_side, max_side=cfg.max_bucket_side, step=cfg.bucket_step,
                               no_upscale=cfg.no_upscale)
    for (bucket, _), item in zip(placement, items, strict=True):
        name = f"{bucket[0]}x{bucket[1]}"
        report.buckets[name] = report.buckets.get(name, 0) + item.repeats
    captions = captions or CaptionConfig()
    try:
        pipeline = build_caption_pipeline(captions, [i.path for i in items], [i.caption for i in items],
                                          show_progress)
    except (CaptionError, ImplicationError) as exc:  # a damaged .captions.json or implications file
        raise DataError(str(exc)) from None
    no_flip = no_flip_images(pipeline.sources, cfg.no_flip_tags, captions.caption_separator)
    dataset = TrainingImages(items, placement, seed=seed, random_crop=cfg.random_crop, flip=cfg.flip,
                             captions=pipeline, no_flip=no_flip, color_jitter=cfg.color_jitter,
                             hue_jitter=cfg.hue_jitter, masks=find_masks(items, root, cfg.masks, cfg.mask_folder),
                             alpha_masks=cfg.masks == "alpha")
    if cfg.cache_latents != "off":
        if encode is None:
            raise ValueError("cache_latents needs an encode function")
        if cfg.color_jitter or cfg.hue_jitter:
            raise DataError("a cached latent has fixed colours: turn off color_jitter and hue_jitter, or the "
                            "latent cache")
        store = LatentStore([file_digest(i.path) for i in items], cache_folder if cfg.cache_latents == "disk" else None)
        fill_latent_cache(dataset, store, encode, cfg.flip, show_progress)
        dataset.latents = store
    return TrainingData(dataset, report, [i.repeats for i in items], batch_size, seed, cfg.num_workers,
                        world_size, rank, cfg.persistent_workers)
