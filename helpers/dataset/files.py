"""The on-disk dataset layout, defined once: what is an image, where its caption and companions are, how
kohya ``N_name`` folders repeat images. The dataset check, the trainer, captioning and downloads all read a
dataset through this module, so they can never disagree about what training will see.

The rules (kohya sd-scripts' where it has one):

- an **image** is a file whose extension Pillow decodes and training reads: ``.png .jpg .jpeg .webp .bmp``,
  plus ``.avif`` / ``.jxl`` when this Pillow has the codec; case does not matter;
- folders are read **at any depth**, except hidden ones and ones starting with ``_`` (``_rejected/`` holds what
  the check moved aside; a leading ``_`` parks any folder); hidden files are skipped;
- an image's **repeats** come from the nearest ``N_name`` folder above it (below the dataset root): N
  repeats, and ``name`` is the caption of its images that have no caption file; ``0_name`` folders are left out
  of training; images in no such folder repeat ``default_repeats`` times;
- the **caption** is ``<stem><ext>`` beside the image (``.txt`` by default, ``.caption`` when configured),
  UTF-8 (a BOM is ignored); training reads its **first line**, as kohya does (the check warns about files
  with more lines); ``caption_files.read_caption`` reads the whole file for editing;
- **companions** that travel with an image when it moves: caption files, ``<stem>.captions.json`` records,
  metadata JSON (``<stem>.json``, gallery-dl's ``<name>.json``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from helpers.dataset.caption_files import CaptionError, caption_path, training_caption

# sd-scripts train_util.IMAGE_EXTENSIONS; .avif / .jxl only when Pillow can decode them here
_OPTIONAL_EXTENSIONS = (".avif", ".jxl")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp") + tuple(
    e for e in _OPTIONAL_EXTENSIONS if e in Image.registered_extensions())
REJECTED_DIRNAME = "_rejected"
# files that travel with an image: captions, tunebook's caption records (helpers.captioning.sidecar), metadata
SIDECAR_SUFFIXES = (".txt", ".caption", ".captions.json", ".json")
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit (~89.5 MP)


def is_skipped_folder(name: str) -> bool:
    """Folders never read as training data: hidden ones (backups, caches, checkpoints) and ``_``-prefixed ones."""
    return name.startswith((".", "_"))


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk(folder: Path, recursive: bool):
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not is_skipped_folder(d)) if recursive else []
        yield Path(root), files


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """The image files under ``folder`` (at any depth unless ``recursive=False``), sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; check the dataset path")
    found = [root / n for root, files in _walk(folder, recursive) for n in files if is_image_name(n)]
    return sorted(found, key=lambda p: str(p.relative_to(folder)))


def list_dataset_files(folder: str | os.PathLike) -> list[Path]:
    """Every file of a dataset (any kind) in the folders training reads, sorted by relative path."""
    folder = Path(folder)
    found = [root / n for root, files in _walk(folder, True) for n in files if not n.startswith(".")]
    return sorted(found, key=lambda p: str(p.relative_to(folder)))


def parse_repeat_folder(name: str) -> tuple[int, str] | None:
    """(repeats, class tokens) of a kohya ``N_name`` folder (N may be 0), or None for any other name.

    Source: kohya-ss/sd-scripts ``library/config_util.py::generate_dreambooth_subsets_config_by_subdirs``:
    the part before the first ``_`` is the repeat count; the rest (underscores kept) is the class tokens.
    """
    head, sep, rest = name.partition("_")
    if not sep or not head.isdigit():
        return None
    return int(head), rest


def image_repeats(image: Path, root: Path, default_repeats: int = 1) -> tuple[int, str]:
    """(repeats, class tokens) of ``image``: from the nearest ``N_name`` folder between it and ``root``."""
    for folder in reversed(image.relative_to(root).parts[:-1]):
        parsed = parse_repeat_folder(folder)
        if parsed is not None:
            return parsed
    return default_repeats, ""


def sidecar_files(image: Path, caption_ext: str = ".txt") -> list[Path]:
    """Files that belong to ``image``: captions, caption records and metadata JSON (``x.txt``, ``x.captions.json``,
    ``x.json``, gallery-dl's ``x.jpg.json``) that exist."""
    candidates = [caption_path(image, caption_ext), *(image.with_name(image.stem + s) for s in SIDECAR_SUFFIXES),
                  image.with_name(image.name + ".json")]
    return [p for p in dict.fromkeys(candidates) if p.exists() and p != image]


@dataclass
class DatasetEntry:
    """One image as training sees it (before decoding): where, how often, and with which caption."""

    path: Path
    repeats: int
    class_tokens: str
    caption: str | None  # None: the caption file is unusable (``caption_problem`` says why)
    caption_problem: str  # "", "missing" (class tokens used), "empty", "multiline", or why it is unusable


def dataset_entries(root: str | os.PathLike, *, caption_ext: str = ".txt",
                    default_repeats: int = 1) -> tuple[list[DatasetEntry], list[str]]:
    """(entries, excluded folders): every image training reads under ``root`` with repeats and caption.

    Images in ``0_name`` folders are left out; those folders are listed as excluded.
    """
    root = Path(root)
    entries, excluded = [], set()
    for image in list_images(root):
        repeats, tokens = image_repeats(image, root, default_repeats)
        if repeats < 1:
            excluded.add(str(image.parent.relative_to(root)))
            continue
        try:
            caption, problem = training_caption(image, caption_ext, tokens)
        except CaptionError as exc:
            caption, problem = None, str(exc)
        entries.append(DatasetEntry(image, repeats, tokens, caption, problem))
    return entries, sorted(f"{f} (0 repeats)" for f in excluded)


def read_image_size(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Width and height after checking the whole file decodes (JPEG at 1/8 scale, which is cheap).

    Raises ``ValueError`` (bigger than ``max_pixels``) or Pillow's errors for a file training cannot read.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below
        with Image.open(path) as im:
            size = im.size
            if size[0] * size[1] > max_pixels:
                raise ValueError(f"{size[0]}x{size[1]} is over the {max_pixels / 1e6:.0f} MP decompression-bomb "
                                 "limit")
            if im.format == "JPEG":
                im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    return size
