"""Dataset images into captioning models: decoded in worker threads while the model runs on the previous batch.

Decoding and resizing full-size images costs 10-30 ms each on one core, about what an A100 needs to tag a whole
batch, so loading runs ahead in a thread pool (Pillow releases the GIL while decoding and resizing). An image
that cannot be read is reported with the reason and skipped; it never stops the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from PIL import Image

T = TypeVar("T")


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def flatten_transparency(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white (taggers and captioners were trained on white)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` fully decoded, as RGB on white."""
    with Image.open(path) as im:
        im.load()
        return flatten_transparency(im)


def _load(path: Path, prepare: Callable[[Image.Image], T]) -> tuple[Path, T | None, str | None]:
    try:
        return path, prepare(open_rgb(path)), None
    except Exception as exc:  # truncated, not an image, unsupported mode, decompression bomb: report, go on
        return path, None, f"unreadable image ({type(exc).__name__}: {exc})"


def iter_batches(paths: Sequence[Path], batch_size: int, prepare: Callable[[Image.Image], T],
                 problems: dict[Path, str], workers: int | None = None) -> Iterator[tuple[list[Path], list[T]]]:
    """``(paths, prepared)`` batches in order, the next batch loading while the caller works on this one.

    ``prepare`` turns an RGB image into what the model takes; unreadable files go to ``problems`` (an empty
    batch is yielded when every file of a batch failed, so progress bars still advance).
    """
    chunks = [list(paths[i:i + batch_size]) for i in range(0, len(paths), batch_size)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        pending: list[Future] = [pool.submit(_load, p, prepare) for p in chunks[0]]
        for index in range(len(chunks)):
            current = pending
            if index + 1 < len(chunks):  # read ahead while the model works on this batch
                pending = [pool.submit(_load, p, prepare) for p in chunks[index + 1]]
            done, items = [], []
            for future in current:
                path, item, error = future.result()
                if error is None:
                    done.append(path)
                    items.append(item)
                else:
                    problems[path] = error
            yield done, items
