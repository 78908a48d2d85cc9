"""Training images on disk: find them, check and clean them, find duplicates, and report on the set.

This module owns the image side of a dataset folder (captions are ``helpers.captions``):

- ``list_images``: the images training will read (kohya's extensions, sorted, skipping ``_rejected/`` and
  hidden folders);
- ``inspect_image`` / ``check_dataset``: decode every file fully and give each a status and reasons
  (truncated, zero bytes, not an image, lying extension, animated, CMYK, 16-bit, palette with transparency,
  EXIF-rotated, too small, decompression bomb);
- ``fix_images`` / ``reject_files``: the fixes a user can apply (EXIF transpose, RGB with transparency flattened
  on a chosen colour, re-encode), originals backed up first; problem files moved to ``_rejected/`` with the
  reason, never deleted;
- ``find_duplicates``: exact (sha256) and near (perceptual hash) duplicate groups;
- ``dataset_report`` and the pictures a person looks at (problem / duplicate contact sheets, histograms);
- kohya's ``N_name`` repeat folders (``parse_repeat_folder``, ``layout_repeat_folder``);
- ``make_demo_dataset``: the synthetic dataset the demo and notebook harness use.

CLI: ``python -m helpers.dataset check DIR [--json] [--fix] [--reject]``, ``layout DIR --repeats N --name X``,
``demo DIR``.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import ExifTags, Image, ImageDraw, ImageOps, UnidentifiedImageError

from helpers.changes import sha256_bytes, unique_path, write_text_atomic
from helpers.config import option

# kohya sd-scripts reads these (train_util.IMAGE_EXTENSIONS, plus upper case); .avif when Pillow has AVIF.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".avif")
REJECTED_DIRNAME = "_rejected"


def is_skipped_folder(name: str) -> bool:
    """Folders tunebook never reads images from: ``_rejected/`` and hidden ones (backups, caches, .ipynb_checkpoints)."""
    return name == REJECTED_DIRNAME or name.startswith(".")


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` that training reads, sorted by path; hidden files and folders are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; check the dataset path")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not is_skipped_folder(d)) if recursive else []
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(root) / name)
    return sorted(found, key=lambda p: str(p.relative_to(folder)))


# ----------------------------------------------------------------------------------------------- demo data

_DEMO_COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 210), "green": (40, 160, 70), "yellow": (235, 200, 40),
                 "white": (245, 245, 245), "black": (15, 15, 15)}
_DEMO_SHAPES = ("circle", "square", "triangle")
# (width, height): square, landscape, portrait and one below a 512 training side
_DEMO_SIZES = [(512, 512), (640, 448), (448, 640), (576, 384), (384, 576), (320, 320)]
# numbering a downloader or file manager leaves behind; captions-from-filenames must strip all of them
_DEMO_SUFFIXES = ["_01", "_02", " (2)", "-3", " copy", ""]


def draw_demo_image(shape: str, colour: str, background: str, size: tuple[int, int], seed: int) -> Image.Image:
    """One synthetic training image: a ``colour`` ``shape`` on a ``background`` with a little jitter."""
    rng = random.Random(seed)
    w, h = size
    img = Image.new("RGB", size, _DEMO_COLOURS[background])
    draw = ImageDraw.Draw(img)
    r = int(min(w, h) * rng.uniform(0.25, 0.4))
    cx, cy = int(w * rng.uniform(0.35, 0.65)), int(h * rng.uniform(0.35, 0.65))
    fill = _DEMO_COLOURS[colour]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def make_demo_dataset(folder: str | os.PathLike, n: int = 12, seed: int = 0) -> Path:
    """Write ``n`` synthetic images whose *filenames are their captions* (``a red circle on blue_01.png``).

    Sizes and aspect ratios vary (some below 512 px), formats are PNG/JPEG/WebP, and the names carry the
    numbering suffixes real downloads have (``_01``, `` (2)``, ``-3``, `` copy``). Existing files are never
    overwritten: a name already taken raises ``FileExistsError``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    colours = list(_DEMO_COLOURS)
    formats = [(".png", "PNG", {}), (".jpg", "JPEG", {"quality": 92}), (".webp", "WEBP", {"quality": 90})]
    seen: dict[str, int] = {}
    for i in range(n):
        shape = _DEMO_SHAPES[i % len(_DEMO_SHAPES)]
        colour = colours[i % 4]
        background = rng.choice([c for c in colours if c != colour])
        caption = f"a {colour} {shape} on {background}"
        seen[caption] = seen.get(caption, 0) + 1
        suffix = _DEMO_SUFFIXES[i % len(_DEMO_SUFFIXES)] if seen[caption] == 1 else f"_{seen[caption]:02d}"
        ext, fmt, kwargs = formats[i % len(formats)]
        path = folder / f"{caption}{suffix}{ext}"
        if path.exists():
            raise FileExistsError(f"{path}: already exists; make the demo dataset in an empty folder")
        img = draw_demo_image(shape, colour, background, _DEMO_SIZES[i % len(_DEMO_SIZES)], seed * 1000 + i)
        tmp = path.with_name(f".{path.name}.tmp")
        img.save(tmp, fmt, **kwargs)
        os.replace(tmp, path)
    return folder


# ----------------------------------------------------------------------------------------------- checking one image

# Pillow format name -> extensions that honestly name it
FORMAT_EXTENSIONS = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",), "WEBP": (".webp",), "BMP": (".bmp",),
                     "AVIF": (".avif",), "GIF": (".gif",), "TIFF": (".tif", ".tiff"), "MPO": (".jpg", ".jpeg")}
CAPTION_EXTENSIONS = (".txt", ".caption")
METADATA_EXTENSIONS = (".json",)
DEFAULT_MIN_SIDE = 256  # kohya's smallest bucket side; smaller images teach blur
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit (~89.5 MP)
_FIXABLE_MODES = {"CMYK", "I;16", "I;16B", "I;16L", "I;16N", "I", "F", "1", "LAB", "HSV", "YCbCr", "RGBX", "La", "PA"}

# problem code -> (status, what the fix does); the reason text per file says the specifics
PROBLEMS = {
    "empty": ("rejected", "zero bytes: the upload or download failed; get the file again"),
    "not_image": ("rejected", "not an image Pillow can read"),
    "truncated": ("rejected", "truncated or corrupt: only part of the image decodes; download it again"),
    "bomb": ("rejected", "larger than the decompression-bomb limit; downscale it outside tunebook"),
    "too_small": ("rejected", "smaller than the minimum side; find a bigger copy or upscale it"),
    "wrong_extension": ("fixable", "the extension does not match the content: renamed to the right one"),
    "animated": ("fixable", "animated: training reads the first frame only; re-encoded as that frame"),
    "cmyk": ("fixable", "CMYK colour: converted to RGB"),
    "16bit": ("fixable", "16 bits per channel: converted to 8-bit RGB"),
    "palette_transparency": ("fixable", "palette with transparency: flattened on the background colour"),
    "transparency": ("fixable", "transparent pixels: flattened on the background colour"),
    "exif_rotated": ("fixable", "EXIF orientation: pixels rotated so every tool sees it upright"),
    "unusual_mode": ("fixable", "unusual pixel mode: converted to RGB"),
    "unsupported_format": ("fixable", "a format training does not read: converted to PNG"),
    "caption_encoding": ("rejected", "caption is not UTF-8 text: re-save it as UTF-8 (moved aside, not lost)"),
}


@dataclass
class FileCheck:
    """The check result of one file in a dataset folder."""

    path: Path
    kind: str  # "image", "caption", "metadata", "other"
    status: str  # "ok", "fixable", "rejected", "ignored" (metadata and other files training does not read)
    problems: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    frames: int = 1
    size_bytes: int = 0
    sha256: str | None = None
    phash: str | None = None  # 64-bit perceptual hash as 16 hex digits
    has_caption: bool | None = None

    def add(self, code: str, detail: str = "") -> None:
        if code in self.problems:
            return
        self.problems.append(code)
        status, text = PROBLEMS[code]
        self.reasons.append(f"{text} ({detail})" if detail else text)
        if status == "rejected" or self.status != "rejected":
            self.status = status

    def to_dict(self, root: Path | None = None) -> dict[str, object]:
        out = {k: getattr(self, k) for k in ("kind", "status", "problems", "reasons", "format", "width", "height",
                                             "mode", "frames", "size_bytes", "sha256", "phash", "has_caption")}
        out["path"] = str(self.path.relative_to(root)) if root else str(self.path)
        return out


def perceptual_hash(img: Image.Image) -> str:
    """64-bit DCT perceptual hash (pHash) as 16 hex digits.

    Grayscale 32x32, 2-D DCT-II, keep the 8x8 lowest frequencies, one bit per coefficient above their median.
    Source: C. Zauner, "Implementation and Benchmarking of Perceptual Image Hash Functions" (2010), and
    N. Krawetz, "Looks Like It" (hackerfactor.com, 2011). Robust to rescaling and re-encoding.
    """
    gray = img.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float64)
    n = 32
    k = np.arange(n)
    basis = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))  # DCT-II matrix, rows = frequencies
    coeffs = (basis @ pixels @ basis.T)[:8, :8]
    bits = (coeffs > np.median(coeffs)).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def hamming_distance(a: str, b: str) -> int:
    """Differing bits between two hex hashes."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def _is_16bit(img: Image.Image) -> bool:
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        return True
    # Pillow opens 48/64-bit PNGs as 8-bit RGB(A); the raw mode of the tile still says ";16"
    return any(";16" in str(t.args if isinstance(t.args, str) else (t.args or ("",))[0]) for t in (img.tile or []))


def _has_transparency(img: Image.Image) -> bool:
    if img.mode in ("RGBA", "LA", "La", "PA"):
        alpha = img.getchannel("A")
        return alpha.getextrema()[0] < 255
    return "transparency" in img.info


def inspect_image(path: str | os.PathLike, *, min_side: int = DEFAULT_MIN_SIDE,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> FileCheck:
    """Decode ``path`` fully and list what is wrong with it; never raises for a bad file."""
    path = Path(path)
    ext = path.suffix.lower()
    check = FileCheck(path=path, kind="image", status="ok")
    try:
        data = path.read_bytes()
    except OSError as exc:
        check.add("not_image", f"cannot read the file: {exc.strerror or exc}")
        return check
    check.size_bytes = len(data)
    if not data:
        check.add("empty")
        return check
    check.sha256 = sha256_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit below
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            check.add("bomb", str(exc).split(",")[0])
            return check
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            check.add("not_image", _what_it_is(data) if isinstance(exc, UnidentifiedImageError) else str(exc))
            return check
        check.format, check.mode = img.format, img.mode
        check.width, check.height = img.size
        check.frames = getattr(img, "n_frames", 1)
        if img.width * img.height > max_pixels:
            check.add("bomb", f"{img.width}x{img.height} = {img.width * img.height / 1e6:.0f} MP, "
                              f"limit {max_pixels / 1e6:.0f} MP")
            return check
        is_16bit = _is_16bit(img)
        try:
            img.load()
        except Exception as exc:  # Pillow raises OSError, SyntaxError, zlib/struct errors for damaged data
            check.add("truncated", str(exc) or type(exc).__name__)
            return check
    if ext in IMAGE_EXTENSIONS and check.format not in ("MPO",) and \
            ext not in FORMAT_EXTENSIONS.get(check.format or "", ()):
        check.add("wrong_extension", f"{ext} file holds {check.format}")
    if ext not in IMAGE_EXTENSIONS:
        check.add("unsupported_format", f"{check.format} ({ext or 'no extension'})")
    if check.frames > 1 and check.format != "MPO":  # MPO: a JPEG with a stereo/preview frame, not animation
        check.add("animated", f"{check.frames} frames")
    if img.mode == "CMYK":
        check.add("cmyk")
    elif is_16bit:
        check.add("16bit", img.mode)
    elif img.mode == "P" and "transparency" in img.info:
        check.add("palette_transparency")
    elif _has_transparency(img):
        check.add("transparency", img.mode)
    elif img.mode in _FIXABLE_MODES:
        check.add("unusual_mode", img.mode)
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # damaged EXIF: the pixels are fine, and training ignores EXIF
        orientation = 1
    if orientation not in (1, None):
        check.add("exif_rotated", f"orientation {orientation}")
        if orientation in (5, 6, 7, 8):  # rotated by 90°: the user sees width and height swapped
            check.width, check.height = check.height, check.width
    if min(check.width or 0, check.height or 0) < min_side:
        check.add("too_small", f"{check.width}x{check.height}, minimum side {min_side}")
    try:
        check.phash = perceptual_hash(ImageOps.exif_transpose(_first_frame_rgb(_reduced(img), (255, 255, 255))))
    except Exception:  # a hash is a convenience; the checks above already decided the status
        check.phash = None
    return check


def _what_it_is(data: bytes) -> str:
    """A hint for a file Pillow cannot identify: web pages and text saved under an image name are common."""
    head = data[:256].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "it is a web page (HTML): the download saved a page instead of the image"
    if head.startswith((b"{", b"[")):
        return "it is JSON text, not an image"
    if data[:4] in (b"PK\x03\x04",):
        return "it is a zip archive: unpack it"
    return f"unknown format (first bytes {data[:8].hex(' ')})"


def _reduced(img: Image.Image, target: int = 128) -> Image.Image:
    """A box-downscaled copy with a shorter side near ``target`` (hashing a 1536 px image costs 10x more)."""
    factor = min(img.size) // target
    if factor < 2:
        return img
    try:
        small = img.reduce(factor)
    except (ValueError, NotImplementedError):  # modes the C reducer does not handle (P, 1, I;16...)
        return img
    small.info = dict(img.info)
    small.getexif().update(img.getexif())  # keep the orientation so the hash sees the picture upright
    return small


def _first_frame_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """8-bit RGB of the current frame, transparency composited over ``background``."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBA", "LA", "La", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGB")


# ----------------------------------------------------------------------------------------------- checking a folder


@dataclass
class DatasetCheck:
    """Every file of a dataset folder with its status, plus duplicate groups and caption coverage."""

    folder: Path
    files: list[FileCheck]
    exact_duplicates: list[list[Path]] = field(default_factory=list)
    near_duplicates: list[list[Path]] = field(default_factory=list)
    orphan_captions: list[Path] = field(default_factory=list)
    min_side: int = DEFAULT_MIN_SIDE

    @property
    def images(self) -> list[FileCheck]:
        """Files training would read or that are images in another format."""
        return [f for f in self.files if f.kind == "image"]

    def with_status(self, status: str) -> list[FileCheck]:
        return [f for f in self.files if f.status == status]

    def to_dict(self) -> dict[str, object]:
        rel = self.folder
        counts: dict[str, int] = {}
        for f in self.files:
            counts[f.status] = counts.get(f.status, 0) + 1
        return {"folder": str(self.folder), "counts": counts, "min_side": self.min_side,
                "files": [f.to_dict(rel) for f in self.files],
                "exact_duplicates": [[str(p.relative_to(rel)) for p in g] for g in self.exact_duplicates],
                "near_duplicates": [[str(p.relative_to(rel)) for p in g] for g in self.near_duplicates],
                "orphan_captions": [str(p.relative_to(rel)) for p in self.orphan_captions]}


def list_dataset_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` except hidden ones and those in ``_rejected/`` or hidden folders."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not is_skipped_folder(d))
        out += [Path(root) / n for n in files if not n.startswith(".")]
    return sorted(out, key=lambda p: str(p.relative_to(folder)))


def _classify(path: Path, caption_ext: str, min_side: int, max_pixels: int) -> FileCheck:
    """The check of one file of any kind; an unexpected error becomes that file's reason, never a crash."""
    try:
        return _classify_file(path, caption_ext, min_side, max_pixels)
    except Exception as exc:  # e.g. permissions, a file deleted while checking
        check = FileCheck(path=path, kind="image" if path.suffix.lower() in IMAGE_EXTENSIONS else "other",
                          status="ok")
        check.add("not_image", f"could not be read: {type(exc).__name__}: {exc}")
        return check


def _classify_file(path: Path, caption_ext: str, min_side: int, max_pixels: int) -> FileCheck:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return inspect_image(path, min_side=min_side, max_pixels=max_pixels)
    if ext == caption_ext or ext in CAPTION_EXTENSIONS:
        check = FileCheck(path=path, kind="caption", status="ok", size_bytes=path.stat().st_size)
        try:
            path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            check.add("caption_encoding", f"byte {exc.start}")
        return check
    if ext in METADATA_EXTENSIONS:
        return FileCheck(path=path, kind="metadata", status="ignored", reasons=["metadata (e.g. gallery-dl JSON)"],
                         size_bytes=path.stat().st_size)
    try:  # an image in a format training skips (GIF, TIFF...) can be converted; anything else is left alone
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as probe:
                probe.size  # noqa: B018 - opening succeeded: it is an image
        return inspect_image(path, min_side=min_side, max_pixels=max_pixels)
    except Exception:
        return FileCheck(path=path, kind="other", status="ignored", reasons=["not an image; training ignores it"],
                         size_bytes=path.stat().st_size)


def check_dataset(folder: str | os.PathLike, *, min_side: int = DEFAULT_MIN_SIDE,
                  max_pixels: int = DEFAULT_MAX_PIXELS, caption_ext: str = ".txt", near_threshold: int = 6,
                  workers: int = 2, progress: bool = True) -> DatasetCheck:
    """Decode every image in ``folder`` fully and report each file's status; finds duplicates and captionless images.

    Nothing is changed on disk. ``near_threshold`` is the largest pHash distance (of 64 bits) called a near
    duplicate. Decoding runs in ``workers`` threads (Pillow releases the GIL while decoding).
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; give the dataset folder to check")
    paths = list_dataset_files(folder)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = pool.map(lambda p: _classify(p, caption_ext, min_side, max_pixels), paths)
        files = list(tqdm(jobs, total=len(paths), desc="checking images", unit="file", disable=not progress))
    image_stems = set()
    for f in files:
        if f.kind == "image":
            f.has_caption = caption_path_of(f.path, caption_ext).exists()
            image_stems.add(f.path.with_suffix(""))
    orphans = [f.path for f in files if f.kind == "caption" and f.path.suffix.lower() == caption_ext
               and f.path.with_suffix("") not in image_stems]
    exact, near = find_duplicates([f for f in files if f.kind == "image"], near_threshold)
    return DatasetCheck(folder=folder, files=files, exact_duplicates=exact, near_duplicates=near,
                        orphan_captions=orphans, min_side=min_side)


def caption_path_of(image: Path, ext: str = ".txt") -> Path:
    from helpers.captions import caption_path

    return caption_path(image, ext)


def find_duplicates(checks: list[FileCheck], near_threshold: int = 6) -> tuple[list[list[Path]], list[list[Path]]]:
    """(exact groups by sha256, near groups by pHash distance <= ``near_threshold``), each sorted by path.

    A near group holds files with different bytes whose pictures look alike (resized, re-encoded, cropped a
    little); exact copies of one picture count once there.
    """
    by_sha: dict[str, list[Path]] = {}
    for c in checks:
        if c.sha256:
            by_sha.setdefault(c.sha256, []).append(c.path)
    exact = sorted((sorted(g) for g in by_sha.values() if len(g) > 1), key=lambda g: str(g[0]))
    reps = [c for c in checks if c.phash and c.sha256 and by_sha[c.sha256][0] == c.path]
    if len(reps) < 2:
        return exact, []
    hashes = np.array([int(c.phash, 16) for c in reps], dtype=np.uint64)
    parent = list(range(len(reps)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(reps) - 1):
        close = np.nonzero(np.bitwise_count(hashes[i + 1:] ^ hashes[i]) <= near_threshold)[0]
        for j in close + i + 1:
            parent[find(int(j))] = find(i)
    groups: dict[int, list[Path]] = {}
    for i, c in enumerate(reps):
        groups.setdefault(find(i), []).append(c.path)
    near = sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: str(g[0]))
    return exact, near


# ----------------------------------------------------------------------------------------------- fixing and rejecting


@dataclass
class CleanResult:
    """What ``fix_images`` / ``reject_files`` changed; undo with ``helpers.captions.undo_changes(backup_dir)``."""

    fixed: list[tuple[Path, Path, list[str]]] = field(default_factory=list)  # (old path, new path, problems)
    rejected: list[tuple[Path, Path]] = field(default_factory=list)  # (old path, path in _rejected/)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    backup_dir: Path | None = None


_SAVE_FORMATS = {".jpg": ("JPEG", {"quality": 95, "subsampling": 0}), ".jpeg": ("JPEG", {"quality": 95, "subsampling": 0}),
                 ".png": ("PNG", {"optimize": False}), ".webp": ("WEBP", {"quality": 95, "method": 4}),
                 ".bmp": ("BMP", {}), ".avif": ("AVIF", {"quality": 90})}


def convert_to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """The first frame of ``img`` upright (EXIF applied) as 8-bit RGB, transparency flattened on ``background``."""
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    if img.mode == "CMYK" and img.info.get("icc_profile"):
        try:  # a CMYK file with a profile converts faithfully through it
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
            img = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:
            img = img.convert("RGB")
    upright = ImageOps.exif_transpose(img)
    return _first_frame_rgb(upright, background)


def fix_images(checks: list[FileCheck], root: str | os.PathLike, *, background: tuple[int, int, int] = (255, 255, 255),
               progress: bool = True) -> CleanResult:
    """Apply the fixes of every ``fixable`` file; originals go to a backup folder first (undoable).

    A file whose only problem is its extension is renamed (bytes kept). Others are re-encoded as 8-bit RGB in
    the format their extension names (first frame, EXIF orientation applied, transparency on ``background``);
    EXIF is not carried over (it would re-rotate the pixels, and it can hold GPS data). Formats training
    does not read are written as PNG beside the original's name.
    """
    from tqdm.auto import tqdm

    from helpers.captions import new_backup_dir, save_manifest, write_bytes_atomic

    root = Path(root).resolve()
    result = CleanResult()
    todo = [c for c in checks if c.status == "fixable"]
    if not todo:
        return result
    result.backup_dir = new_backup_dir(root, "fixes")
    entries: list[dict] = []
    try:
        for check in tqdm(todo, desc="fixing images", unit="img", disable=not progress):
            path = check.path.resolve()
            rel = os.path.relpath(path, root)
            try:
                if check.problems == ["wrong_extension"]:
                    target = path.with_suffix(FORMAT_EXTENSIONS[check.format][0])
                    if not target.exists():
                        os.rename(path, target)
                        entries.append({"action": "renamed", "path": rel, "to": os.path.relpath(target, root)})
                        result.fixed.append((check.path, target, list(check.problems)))
                        continue
                ext = path.suffix.lower()
                target = path if ext in _SAVE_FORMATS else unique_path(path.with_suffix(".png"))
                fmt, kwargs = _SAVE_FORMATS[target.suffix.lower()]
                with Image.open(path) as img:
                    rgb = convert_to_rgb(img, background)
                    icc = img.info.get("icc_profile") if img.mode not in ("CMYK",) else None
                buf = io.BytesIO()
                rgb.save(buf, fmt, **kwargs, **({"icc_profile": icc} if icc else {}))
                saved = result.backup_dir / "files" / rel
                saved.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, saved)
                data = buf.getvalue()
                write_bytes_atomic(target, data)
                if target != path:
                    path.unlink()
                    entries.append({"action": "replaced", "path": rel, "new_sha256": None,
                                    "backup": os.path.relpath(saved, result.backup_dir)})
                    entries.append({"action": "created", "path": os.path.relpath(target, root),
                                    "new_sha256": sha256_bytes(data)})
                else:
                    entries.append({"action": "replaced", "path": rel, "new_sha256": sha256_bytes(data),
                                    "backup": os.path.relpath(saved, result.backup_dir)})
                result.fixed.append((check.path, target, list(check.problems)))
            except Exception as exc:  # one bad file must not stop the rest; it stays as it was
                result.failed.append((check.path, f"{type(exc).__name__}: {exc}"))
    finally:
        save_manifest(result.backup_dir, root, entries)
    return result


# files that travel with an image: captions, tunebook's caption records (helpers.captioning.sidecar), metadata
SIDECAR_SUFFIXES = (".txt", ".caption", ".captions.json", ".json")


def sidecar_files(image: Path, caption_ext: str = ".txt") -> list[Path]:
    """Files that belong to ``image``: captions, caption records and metadata JSON (``x.txt``, ``x.captions.json``,
    ``x.json``, gallery-dl's ``x.jpg.json``)."""
    candidates = [caption_path_of(image, caption_ext), *(image.with_name(image.stem + s) for s in SIDECAR_SUFFIXES),
                  image.with_name(image.name + ".json")]
    return [p for p in dict.fromkeys(candidates) if p.exists() and p != image]


def reject_files(checks: list[FileCheck], root: str | os.PathLike, caption_ext: str = ".txt") -> CleanResult:
    """Move every ``rejected`` file (with its caption and metadata) to ``<root>/_rejected/``, never deleting.

    The reasons are appended to ``_rejected/reasons.jsonl``; ``undo_changes(result.backup_dir)`` moves them back.
    """
    from helpers.captions import new_backup_dir, save_manifest

    root = Path(root).resolve()
    result = CleanResult()
    todo = [c for c in checks if c.status == "rejected"]
    if not todo:
        return result
    rejected_dir = root / REJECTED_DIRNAME
    result.backup_dir = new_backup_dir(root, "rejects")
    entries: list[dict] = []
    log_lines = []
    try:
        for check in todo:
            path = check.path.resolve()
            try:
                target = unique_path(rejected_dir / path.relative_to(root))
            except ValueError:
                result.failed.append((check.path, f"not inside {root}"))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            sidecars = sidecar_files(path, caption_ext) if check.kind == "image" else []
            moves = [(path, target)] + [(s, target.with_name(target.stem + s.name[len(path.stem):]))
                                        for s in sidecars]
            for src, dst in moves:
                if dst.exists():
                    dst = unique_path(dst)
                os.rename(src, dst)
                entries.append({"action": "renamed", "path": os.path.relpath(src, root),
                                "to": os.path.relpath(dst, root)})
            result.rejected.append((check.path, target))
            log_lines.append(json.dumps({"file": os.path.relpath(path, root), "moved_to": os.path.relpath(target, root),
                                         "problems": check.problems, "reasons": check.reasons,
                                         "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                        ensure_ascii=False))
    finally:
        save_manifest(result.backup_dir, root, entries)
        if log_lines:
            with open(rejected_dir / "reasons.jsonl", "a", encoding="utf-8") as fh:
                fh.write("\n".join(log_lines) + "\n")
    return result


# ----------------------------------------------------------------------------------------------- kohya repeat folders


def parse_repeat_folder(name: str) -> tuple[int, str] | None:
    """(repeats, class tokens) of a kohya ``N_name`` folder, or None when the name is not of that form.

    Source: kohya-ss/sd-scripts ``library/config_util.py::generate_dreambooth_subsets_config_by_subdirs``:
    the part before the first ``_`` must be an int >= 1; the rest (underscores kept) is the class tokens.
    """
    head, sep, rest = name.partition("_")
    if not sep or not head.isdigit() or int(head) < 1:
        return None
    return int(head), rest


def layout_repeat_folder(folder: str | os.PathLike, repeats: int, name: str, caption_ext: str = ".txt") -> Path:
    """Move the images directly in ``folder`` (with captions and metadata) into ``folder/<repeats>_<name>/``.

    Kohya reads only ``N_name`` subfolders of its train folder; this lays a flat upload out that way. Undo
    with ``helpers.captions.undo_changes`` on the backup folder named in the manifest it writes.
    """
    from helpers.captions import new_backup_dir, save_manifest

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if not name or any(c in name for c in '/\\:*?"<>|') or name.strip(". ") != name:
        raise ValueError(f"folder name {name!r}: use letters, digits, spaces or '_' (no path characters)")
    folder = Path(folder).resolve()
    target = folder / f"{repeats}_{name}"
    images = list_images(folder, recursive=False)
    if not images:
        raise FileNotFoundError(f"{folder}: no images directly in this folder to lay out")
    target.mkdir(exist_ok=True)
    backup = new_backup_dir(folder, "layout")
    entries: list[dict] = []
    try:
        for image in images:
            for src in [image, *sidecar_files(image, caption_ext)]:
                dst = target / src.name
                if dst.exists():
                    raise FileExistsError(f"{dst}: already exists; nothing there was overwritten "
                                          f"(undo the moves so far with the backup {backup})")
                os.rename(src, dst)
                entries.append({"action": "renamed", "path": os.path.relpath(src, folder),
                                "to": os.path.relpath(dst, folder)})
    finally:
        save_manifest(backup, folder, entries)
    return target


# ----------------------------------------------------------------------------------------------- report and pictures


def find_repeat_folders(folder: Path) -> list[dict[str, object]]:
    """Kohya ``N_name`` subfolders directly under ``folder`` with their repeats and image counts."""
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not is_skipped_folder(p.name)):
        parsed = parse_repeat_folder(sub.name)
        out.append({"folder": sub.name, "repeats": parsed[0] if parsed else None,
                    "class_tokens": parsed[1] if parsed else None, "images": len(list_images(sub))})
    return out


def dataset_report(check: DatasetCheck, *, resolution: int = 1024, min_bucket: int = 256, max_bucket: int = 2048,
                   bucket_step: int = 64, no_upscale: bool = False) -> dict[str, object]:
    """Counts, formats, sizes, problems, images below ``resolution``, aspect buckets, captions, repeat folders.

    Buckets come from the training stage's own functions (``helpers.training.data``), so the report shows the
    buckets training will use.
    """
    from helpers.training.data import make_buckets, select_bucket
    root = check.folder
    rel = lambda p: str(Path(p).relative_to(root))  # noqa: E731
    usable = [f for f in check.images if f.status in ("ok", "fixable") and f.width and f.height]
    counts: dict[str, int] = {}
    formats: dict[str, int] = {}
    problems: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for f in check.files:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
        if f.kind == "image":
            counts[f.status] = counts.get(f.status, 0) + 1
        for code in f.problems:
            problems[code] = problems.get(code, 0) + 1
    for f in check.images:
        if f.format:
            formats[f.format] = formats.get(f.format, 0) + 1
    buckets = None if no_upscale else make_buckets(resolution, min_bucket, max_bucket, bucket_step)
    per_bucket: dict[str, int] = {}
    below = []
    for f in usable:
        (bw, bh), (rw, rh) = select_bucket(f.width, f.height, buckets, resolution=resolution, step=bucket_step)
        per_bucket[f"{bw}x{bh}"] = per_bucket.get(f"{bw}x{bh}", 0) + 1
        # below resolution = training would upscale it to fill its bucket (the guide upscales those by hand);
        # without upscaling it trains smaller than the model's resolution instead
        if rw > f.width or rh > f.height or (buckets is None and bw * bh < 0.9 * resolution * resolution):
            below.append(rel(f.path))
    folders = find_repeat_folders(root)
    loose = list_images(root, recursive=False)
    warnings_ = []
    repeat_folders = [f for f in folders if f["repeats"]]
    if repeat_folders and loose:
        warnings_.append(f"{len(loose)} images sit directly in {root.name}/ beside N_name folders: kohya-style "
                         "training ignores them; move them into a repeat folder")
    for f in folders:
        if repeat_folders and not f["repeats"] and f["images"]:
            warnings_.append(f"folder {f['folder']!r} is not named N_name: kohya-style training skips its "
                             f"{f['images']} images")
    if check.orphan_captions:
        warnings_.append(f"{len(check.orphan_captions)} caption files have no image")
    layout = "repeat folders" if repeat_folders and not loose else ("flat" if not repeat_folders else "mixed")
    samples_per_epoch = sum(f["repeats"] * f["images"] for f in repeat_folders) if repeat_folders else len(usable)
    return {
        "folder": str(root),
        "files": len(check.files),
        "images": len(check.images),
        "usable_images": len(usable),
        "counts": counts,
        "file_kinds": kinds,
        "formats": formats,
        "problems": problems,
        "resolution": resolution,
        "below_resolution": below,
        "buckets": dict(sorted(per_bucket.items(), key=lambda kv: -kv[1])),
        "missing_captions": [rel(f.path) for f in check.images if f.status != "rejected" and not f.has_caption],
        "orphan_captions": [rel(p) for p in check.orphan_captions],
        "exact_duplicate_groups": len(check.exact_duplicates),
        "near_duplicate_groups": len(check.near_duplicates),
        "layout": layout,
        "repeat_folders": folders,
        "samples_per_epoch": samples_per_epoch,
        "warnings": warnings_,
    }


def format_report(report: dict[str, object], check: DatasetCheck | None = None, limit: int = 30) -> str:
    """The report as plain text (CLI, notebooks without widgets)."""
    lines = [f"dataset {report['folder']}: {report['images']} images ({report['usable_images']} usable), "
             f"{report['files']} files",
             "images: " + (", ".join(f"{k} {v}" for k, v in sorted(report["counts"].items())) or "none")
             + "; files: " + ", ".join(f"{k} {v}" for k, v in sorted(report["file_kinds"].items())),
             "formats: " + (", ".join(f"{k} {v}" for k, v in sorted(report["formats"].items())) or "none")]
    if report["problems"]:
        lines.append("problems: " + ", ".join(f"{k} {v}" for k, v in sorted(report["problems"].items())))
    lines.append(f"below {report['resolution']}x{report['resolution']} pixels: {len(report['below_resolution'])} "
                 "(upscale them, as the guide does)")
    lines.append("buckets: " + (", ".join(f"{k} ({v})" for k, v in report["buckets"].items()) or "none"))
    lines.append(f"missing captions: {len(report['missing_captions'])}; duplicate groups: exact "
                 f"{report['exact_duplicate_groups']}, near {report['near_duplicate_groups']}; layout: "
                 f"{report['layout']}; samples per epoch: {report['samples_per_epoch']}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    if check is not None:
        bad = [f for f in check.files if f.status in ("fixable", "rejected")]
        for f in bad[:limit]:
            lines.append(f"  {f.status:<8} {f.path.relative_to(check.folder)}: {'; '.join(f.reasons)}")
        if len(bad) > limit:
            lines.append(f"  ... and {len(bad) - limit} more (see --json)")
        for group in check.exact_duplicates[:limit]:
            lines.append("  same bytes: " + " = ".join(str(p.relative_to(check.folder)) for p in group))
        for group in check.near_duplicates[:limit]:
            lines.append("  look alike: " + " ~ ".join(str(p.relative_to(check.folder)) for p in group))
    return "\n".join(lines)


def problems_sheet(check: DatasetCheck, limit: int = 48, columns: int = 6, size: int = 160) -> Image.Image | None:
    """A contact sheet of the fixable and rejected images, each captioned with its status and first reason."""
    from helpers.ui.gallery import thumbnail_grid

    bad = [f for f in check.images if f.status in ("fixable", "rejected")][:limit]
    if not bad:
        return None
    items = [(f.path if f.status == "fixable" or "bomb" not in f.problems else _placeholder(size, "too large"),
              f"{f.path.name}\n{f.status}: {f.reasons[0].split(':')[0]}") for f in bad]
    return thumbnail_grid(items, columns=columns, size=size)


def duplicates_sheet(check: DatasetCheck, limit_groups: int = 12, columns: int = 6,
                     size: int = 160) -> Image.Image | None:
    """A contact sheet of duplicate groups (exact first, then near), captioned with group number and file."""
    from helpers.ui.gallery import thumbnail_grid

    groups = [("same", g) for g in check.exact_duplicates] + [("alike", g) for g in check.near_duplicates]
    items = []
    for number, (kind, group) in enumerate(groups[:limit_groups], 1):
        items += [(p, f"#{number} {kind}\n{p.name}") for p in group]
    return thumbnail_grid(items, columns=columns, size=size) if items else None


def _placeholder(size: int, text: str) -> Image.Image:
    tile = Image.new("RGB", (size, size), (60, 60, 90))
    ImageDraw.Draw(tile).text((6, size // 2 - 6), text, fill=(255, 255, 255))
    return tile


def resolution_histogram(check: DatasetCheck, resolution: int = 1024) -> Image.Image | None:
    """Histogram of each usable image's size as the side of a square of the same area (compare: ``resolution``)."""
    from helpers.ui.charts import histogram

    sides = [math.sqrt(f.width * f.height) for f in check.images
             if f.status in ("ok", "fixable") and f.width and f.height]
    if not sides:
        return None
    return histogram(sides, bins=20, title=f"image size (training resolution {resolution})",
                     xlabel="sqrt(width x height), px")


def buckets_chart(report: dict[str, object]) -> Image.Image | None:
    """Bar chart of how many images fall into each aspect-ratio bucket."""
    from helpers.ui.charts import bar_chart

    buckets = report["buckets"]
    if not buckets:
        return None
    return bar_chart(list(buckets), list(buckets.values()), title="aspect-ratio buckets", xlabel="bucket",
                     ylabel="images")


def parse_colour(text: str) -> tuple[int, int, int]:
    """An RGB colour from a name (``white``), ``#rrggbb`` or ``r,g,b``."""
    from PIL import ImageColor

    text = text.strip()
    try:
        if "," in text:
            parts = tuple(int(v) for v in text.split(","))
            if len(parts) != 3 or not all(0 <= v <= 255 for v in parts):
                raise ValueError
            return parts  # type: ignore[return-value]
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        raise ValueError(f"background colour {text!r}: use a name (white), #rrggbb or r,g,b") from None


# ----------------------------------------------------------------------------------------------- demo hook and CLI


@dataclass
class CheckConfig:
    """What notebook 01's check form edits."""

    format_version: ClassVar[int] = 1
    resolution: int = option(1024, help="training resolution (SDXL 1024, SD 1.5 512): the report counts images "
                                        "below it and shows their buckets", unit="px", min=256, max=4096, step=64)
    min_side: int = option(DEFAULT_MIN_SIDE, help="reject images whose shorter side is smaller", unit="px", min=1,
                           max=4096)
    max_megapixels: float = option(DEFAULT_MAX_PIXELS / 1e6, help="reject larger images (decompression-bomb "
                                   "limit)", unit="MP", min=1.0, max=1000.0, group="advanced")
    near_threshold: int = option(6, help="largest perceptual-hash distance (of 64) called a near duplicate",
                                 min=0, max=32, group="advanced")
    fix: bool = option(False, help="apply the fixes (EXIF rotation, RGB, transparency, re-encode); originals are "
                                   "backed up first", label="apply fixes")
    reject: bool = option(False, help="move rejected files (with captions) to _rejected/ (never deleted)",
                          label="move rejects to _rejected/")
    background: str = option("white", help="colour transparency is flattened on (name, #rrggbb or r,g,b)")


def run_check(folder: str | os.PathLike, cfg: CheckConfig) -> tuple[DatasetCheck, dict[str, object]] | tuple[None, None]:
    """Notebook 01's check step: check ``folder`` and print the report; (None, None) with a message when there
    is no such dataset yet."""
    folder = Path(folder)
    if not folder.is_dir() or not list_dataset_files(folder):
        print(f"nothing to check: {folder} is missing or empty (download a dataset above first)")
        return None, None
    check = check_dataset(folder, min_side=cfg.min_side, max_pixels=int(cfg.max_megapixels * 1e6),
                          near_threshold=cfg.near_threshold)
    report = dataset_report(check, resolution=cfg.resolution)
    print(format_report(report, check))
    return check, report


def show_check(check: DatasetCheck | None, report: dict[str, object] | None) -> None:
    """Display the pictures of a check: problems and duplicates contact sheets, size histogram, bucket chart."""
    from IPython.display import display

    if check is None:
        print("no check to show")
        return
    shown = False
    for title, img in (("problems (fixable and rejected)", problems_sheet(check)),
                       ("duplicates (same bytes / look alike)", duplicates_sheet(check)),
                       ("image sizes", resolution_histogram(check, int(report["resolution"]))),
                       ("buckets", buckets_chart(report))):
        if img is not None:
            print(title)
            display(img)
            shown = True
    if not shown:
        print("no images to show")


def clean_dataset(check: DatasetCheck | None, cfg: CheckConfig) -> dict[str, object]:
    """Notebook 01's clean step: apply fixes and move rejects as ``cfg`` says; prints what changed and how to undo."""
    if check is None:
        print("nothing to clean")
        return {}
    out: dict[str, object] = {}
    if cfg.fix:
        res = fix_images(check.files, check.folder, background=parse_colour(cfg.background))
        out["fixed"], out["fix_failed"], out["fix_backup"] = len(res.fixed), res.failed, res.backup_dir
    if cfg.reject:
        res = reject_files(check.files, check.folder)
        out["rejected"], out["reject_undo"] = len(res.rejected), res.backup_dir
    if not out:
        n_fix, n_rej = len(check.with_status("fixable")), len(check.with_status("rejected"))
        print(f"nothing changed: {n_fix} fixable, {n_rej} rejected. Tick 'apply fixes' / 'move rejects' above "
              "and run the check and this cell again")
        return out
    for key, value in out.items():
        print(f"{key}: {value}")
    undo = [str(v) for k, v in out.items() if k in ("fix_backup", "reject_undo") and v]
    if undo:
        print("undo with: " + "; ".join(f"captions.undo_changes({u!r})" for u in undo))
    return out


def run_demo(ws) -> dict[str, str]:
    """The demo's dataset stage: synthetic images -> local zip -> ``helpers.download`` -> check -> captions."""
    import tempfile
    import zipfile

    from helpers import captions, download

    target = ws.dataset("demo")
    if target.exists() and list_images(target):
        check = check_dataset(target, progress=False)
    else:
        with tempfile.TemporaryDirectory(dir=ws.cache) as tmp:
            src = make_demo_dataset(Path(tmp) / "demo")
            archive = Path(tmp) / "demo.zip"
            with zipfile.ZipFile(archive, "w") as zf:
                for p in sorted(src.iterdir()):
                    zf.write(p, f"demo/{p.name}")
            download.download_dataset(str(archive), target, progress=False)
        check = check_dataset(target, progress=False)
    new = captions.captions_from_filenames([f.path for f in check.images if f.status != "rejected"])
    changes = captions.write_captions(new)
    report = dataset_report(check, resolution=512)
    report_path = target / ".tunebook_report.json"
    write_text_atomic(report_path, json.dumps({"report": report, "check": check.to_dict()}, indent=1))
    return {"dataset": str(target), "dataset report": str(report_path),
            "captions written": f"{len(changes.created)} new .txt files in {target}"}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m helpers.dataset", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_check = sub.add_parser("check", help="check every file; exit 0 when the check ran, whatever it found")
    p_check.add_argument("folder", type=Path)
    p_check.add_argument("--json", action="store_true", help="print every file with its status and reason as JSON")
    p_check.add_argument("--min-side", type=int, default=DEFAULT_MIN_SIDE, help="reject images with a shorter side")
    p_check.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6,
                         help="reject images larger than this (decompression-bomb limit)")
    p_check.add_argument("--resolution", type=int, default=1024, help="training resolution for the report")
    p_check.add_argument("--caption-ext", default=".txt")
    p_check.add_argument("--fix", action="store_true", help="apply fixes (originals backed up first)")
    p_check.add_argument("--reject", action="store_true", help="move rejected files to _rejected/ (never deleted)")
    p_check.add_argument("--background", default="white", help="colour transparency is flattened on")
    p_check.add_argument("--sheets", type=Path, help="write problem/duplicate contact sheets and charts here")
    p_layout = sub.add_parser("layout", help="move a flat folder's images into a kohya N_name subfolder")
    p_layout.add_argument("folder", type=Path)
    p_layout.add_argument("--repeats", type=int, required=True)
    p_layout.add_argument("--name", required=True, help="class tokens / concept name")
    p_demo = sub.add_parser("demo", help="write the synthetic demo dataset into a folder")
    p_demo.add_argument("folder", type=Path)
    p_demo.add_argument("-n", type=int, default=12)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "demo":
            print(make_demo_dataset(args.folder, args.n))
            return 0
        if args.cmd == "layout":
            print(layout_repeat_folder(args.folder, args.repeats, args.name))
            return 0
        background = parse_colour(args.background)
        check = check_dataset(args.folder, min_side=args.min_side, max_pixels=int(args.max_megapixels * 1e6),
                              caption_ext=args.caption_ext, progress=not args.json)
        report = dataset_report(check, resolution=args.resolution)
        actions: dict[str, object] = {}
        if args.fix:
            res = fix_images(check.files, args.folder, background=background, progress=not args.json)
            actions["fixed"] = [[str(a), str(b)] for a, b, _ in res.fixed]
            actions["fix_failed"] = [[str(a), why] for a, why in res.failed]
            actions["fix_backup"] = str(res.backup_dir) if res.backup_dir else None
        if args.reject:
            res = reject_files(check.files, args.folder, args.caption_ext)
            actions["rejected"] = [[str(a), str(b)] for a, b in res.rejected]
            actions["reject_undo"] = str(res.backup_dir) if res.backup_dir else None
        if args.sheets:
            args.sheets.mkdir(parents=True, exist_ok=True)
            pictures = {"problems.png": problems_sheet(check), "duplicates.png": duplicates_sheet(check),
                        "resolution.png": resolution_histogram(check, args.resolution),
                        "buckets.png": buckets_chart(report)}
            for name, img in pictures.items():
                if img is not None:
                    img.save(args.sheets / name)
                    actions.setdefault("pictures", []).append(str(args.sheets / name))
        if args.json:
            print(json.dumps({"report": report, "check": check.to_dict(), "actions": actions}, indent=1,
                             ensure_ascii=False))
        else:
            print(format_report(report, check))
            for key, value in actions.items():
                print(f"{key}: {value if not isinstance(value, list) else len(value)}")
        return 0
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
