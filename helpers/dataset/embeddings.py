"""Image embeddings of dataset files, cached per image content (sha256) and per encoder in the workspace cache.

``embed_image_files(encoder, paths, cache_dir)`` decodes each file as training sees it (EXIF orientation applied,
transparency on white: ``helpers.dataset.fix.convert_to_rgb``), embeds the ones the cache does not hold yet in
batches, and stores them in ``cache_dir/<encoder fingerprint>.safetensors`` (one tensor per image hash, written
atomically). A renamed or moved image is found again by its bytes; an edited one is embedded again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from helpers.changes import sha256_file, write_bytes_atomic
from helpers.dataset.fix import convert_to_rgb
from helpers.models.encoders import ImageEncoder


@dataclass
class Embeddings:
    """Unit rows for the images that could be read, in the order given; ``problems`` names the others."""

    paths: list[Path]
    vectors: np.ndarray
    problems: dict[Path, str] = field(default_factory=dict)
    cached: int = 0


def cache_file(cache_dir: str | os.PathLike, encoder: ImageEncoder) -> Path:
    return Path(cache_dir) / f"{encoder.fingerprint}.safetensors"


def load_cache(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except Exception:  # a damaged cache is only a slower run: start again
        return {}


def save_cache(path: Path, entries: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save

    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, save({k: np.ascontiguousarray(v, np.float32) for k, v in entries.items()}))


def open_training_image(path: Path) -> Image.Image:
    """The picture training sees: first frame, EXIF-upright, RGB on white."""
    with Image.open(path) as im:
        im.load()
        return convert_to_rgb(im)


def embed_image_files(encoder: ImageEncoder, paths: Sequence[Path], cache_dir: str | os.PathLike, *,
                      batch_size: int = 32, progress: bool = True) -> Embeddings:
    """Embeddings of ``paths`` (cached by content); unreadable files are reported in ``problems``, not raised."""
    store_path = cache_file(cache_dir, encoder)
    store = load_cache(store_path)
    hashes: dict[Path, str] = {}
    problems: dict[Path, str] = {}
    for path in paths:
        digest = sha256_file(path)
        if digest is None:
            problems[Path(path)] = "file not found"
        else:
            hashes[Path(path)] = digest
    todo = [p for p, h in hashes.items() if h not in store]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="img", desc=f"embedding with {encoder.name}")
    for start in range(0, len(todo), batch_size):
        images, done = [], []
        for path in todo[start:start + batch_size]:
            try:
                images.append(open_training_image(path))
                done.append(path)
            except Exception as exc:  # truncated, not an image, decompression bomb: report it, go on
                problems[path] = f"unreadable image ({type(exc).__name__}: {exc})"
        if images:
            for path, row in zip(done, encoder.embed_images(images, batch_size=batch_size), strict=True):
                store[hashes[path]] = row
        if bar is not None:
            bar.update(len(todo[start:start + batch_size]))
    if bar is not None:
        bar.close()
    if todo:
        save_cache(store_path, store)
    kept = [p for p in hashes if p not in problems]
    vectors = np.stack([store[hashes[p]] for p in kept]) if kept else np.zeros((0, encoder.dim), np.float32)
    return Embeddings(kept, vectors.astype(np.float32), problems, cached=len(kept) - len([p for p in todo
                                                                                         if p in kept]))
