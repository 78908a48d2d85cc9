"""Contact sheets: many images as one picture with a caption under each (review duplicates, problems, samples)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps


def _load_thumb(item: str | os.PathLike | Image.Image, size: int) -> Image.Image:
    try:
        img = item if isinstance(item, Image.Image) else Image.open(item)
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "P"):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        img = img.convert("RGB")
        img.thumbnail((size, size))
        return img
    except Exception:  # an unreadable file still gets a tile, marked as such
        tile = Image.new("RGB", (size, size), (90, 30, 30))
        ImageDraw.Draw(tile).text((6, size // 2 - 6), "unreadable", fill=(255, 255, 255))
        return tile


def thumbnail_grid(items: Sequence[tuple[str | os.PathLike | Image.Image, str]], columns: int = 6,
                   size: int = 160, caption_lines: int = 2, title: str = "") -> Image.Image:
    """A contact sheet of ``(image or path, caption)`` pairs, ``columns`` wide, thumbnails fit in ``size``."""
    font = ImageFont.load_default()
    columns = max(1, min(columns, len(items) or 1))
    rows = max(1, -(-len(items) // columns))
    line_h, pad = 12, 6
    cell_w, cell_h = size + pad, size + pad + caption_lines * line_h
    top = 20 if title else 0
    sheet = Image.new("RGB", (columns * cell_w + pad, rows * cell_h + pad + top), (245, 245, 245))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 4), title, fill=(0, 0, 0), font=font)
    chars = max(8, size // 6)
    for i, (item, caption) in enumerate(items):
        x = pad + (i % columns) * cell_w
        y = top + pad + (i // columns) * cell_h
        thumb = _load_thumb(item, size)
        sheet.paste(thumb, (x + (size - thumb.width) // 2, y + (size - thumb.height) // 2))
        if not caption and not isinstance(item, Image.Image):
            caption = Path(item).name
        lines = textwrap.wrap(str(caption), chars)[:caption_lines]
        for j, line in enumerate(lines):
            draw.text((x, y + size + 2 + j * line_h), line, fill=(30, 30, 30), font=font)
    return sheet
