"""Checking a dataset folder: decode every file fully, give each a status and reasons, find duplicates.

- ``inspect_image``: one image (truncated, zero bytes, not an image, lying extension, animated, CMYK, 16-bit,
  palette with transparency, EXIF-rotated, too small, decompression bomb);
- ``check_dataset``: every file of a folder (images, captions, metadata, others), each image marked with
  whether training reads it as it is (``trained``), its repeats and the caption training will use — taken
  from ``helpers.dataset.files``, the trainer's own definition;
- ``find_duplicates``: exact (sha256) and near (perceptual hash) duplicate groups.
"""

from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from helpers.changes import sha256_bytes
from helpers.dataset.caption_files import caption_path
from helpers.dataset.files import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    dataset_entries,
    list_dataset_files,
)

# problems that stop training from reading a file at all (the others are warnings or fixes)
UNREADABLE = ("empty", "not_image", "truncated", "bomb", "unsupported_format")
# Pillow format name -> extensions that honestly name it
FORMAT_EXTENSIONS = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",), "WEBP": (".webp",), "BMP": (".bmp",),
                     "AVIF": (".avif",), "GIF": (".gif",), "TIFF": (".tif", ".tiff"), "MPO": (".jpg", ".jpeg")}


CAPTION_EXTENSIONS = (".txt", ".caption")


METADATA_EXTENSIONS = (".json",)


DEFAULT_MIN_SIDE = 256  # kohya's smallest bucket side; smaller images teach blur


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
    # what training does with it as it is (from helpers.dataset.files, the trainer's own rules)
    trained: bool = False
    repeats: int = 0
    caption: str | None = None
    caption_problem: str = ""

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
                                             "mode", "frames", "size_bytes", "sha256", "phash", "has_caption",
                                             "trained", "repeats", "caption", "caption_problem")}
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
    _check_decoded(check, img, ext, is_16bit, min_side)
    return check


def _check_decoded(check: FileCheck, img: Image.Image, ext: str, is_16bit: bool, min_side: int) -> None:
    """The checks of a fully decoded image: extension, format, animation, pixel mode, orientation, size, pHash."""
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
        check.phash = perceptual_hash(ImageOps.exif_transpose(flatten_to_rgb(_reduced(img), (255, 255, 255))))
    except Exception:  # a hash is a convenience; the checks above already decided the status
        check.phash = None


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


def flatten_to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
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
    mark_training_view(files, folder, caption_ext)
    image_stems = {f.path.with_suffix("") for f in files if f.kind == "image"}
    orphans = [f.path for f in files if f.kind == "caption" and f.path.suffix.lower() == caption_ext
               and f.path.with_suffix("") not in image_stems]
    exact, near = find_duplicates([f for f in files if f.kind == "image"], near_threshold)
    return DatasetCheck(folder=folder, files=files, exact_duplicates=exact, near_duplicates=near,
                        orphan_captions=orphans, min_side=min_side)


def mark_training_view(files: list[FileCheck], folder: Path, caption_ext: str) -> None:
    """Give each image check what training will do with it: read it or not, repeats, caption (the trainer's
    rules from ``helpers.dataset.files``, so a check never approves an image training skips)."""
    entries = {e.path: e for e in dataset_entries(folder, caption_ext=caption_ext)[0]}
    for f in files:
        if f.kind != "image":
            continue
        f.has_caption = caption_path(f.path, caption_ext).exists()
        entry = entries.get(f.path)
        f.trained = entry is not None and entry.caption is not None and not set(f.problems) & set(UNREADABLE)
        if entry is not None:
            f.repeats, f.caption, f.caption_problem = entry.repeats, entry.caption, entry.caption_problem


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

