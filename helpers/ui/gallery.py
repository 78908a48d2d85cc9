"""Pictures of many images: contact sheets (a caption under each) and labelled grids (XY plots, samples over time)."""

from __future__ import annotations

import math
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


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, max_lines: int) -> list[str]:
    """Lines of ``text`` that fit ``width`` pixels (the last one shortened with … when it does not all fit)."""
    lines: list[str] = []
    for paragraph in str(text).splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}".strip()
            if draw.textlength(trial, font=font) <= width or not line:
                line = trial
            else:
                lines.append(line)
                line = word
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(1, len(lines[-1]) - 2)] + "…"
    return lines


def tile_images(images: Sequence[Image.Image]) -> Image.Image:
    """Several same-size images as one near-square tile (a batch shown in one grid cell)."""
    if len(images) == 1:
        return images[0]
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    tile = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    for i, img in enumerate(images):
        tile.paste(img.resize((w, h)) if img.size != (w, h) else img, ((i % columns) * w, (i // columns) * h))
    return tile


def labelled_grid(cells: Sequence[Sequence[Image.Image | None]], column_labels: Sequence[str],
                  row_labels: Sequence[str], title: str = "", cell_size: int | None = None) -> Image.Image:
    """Images in rows and columns with a label over each column and beside each row (an XY plot).

    ``cells[row][column]`` may be None (drawn empty). Each image is scaled to fit a square of ``cell_size``
    (default: the largest image side), so cells of different sizes line up; the title wraps to the width.
    """
    images = [img for row in cells for img in row if img is not None]
    size = cell_size or max([max(img.size) for img in images] or [64])
    font = _font(max(12, size // 22))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(font.size * 1.25) if hasattr(font, "size") else 12
    pad = max(4, size // 64)
    label_w = max(120, size // 2)
    col_lines = [_wrap(probe, t, font, size - 2 * pad, 4) for t in column_labels]
    row_lines = [_wrap(probe, t, font, label_w - 2 * pad, max(1, size // line_h)) for t in row_labels]
    head = pad * 2 + line_h * max([len(lines) for lines in col_lines] or [1])
    n_cols = max(len(column_labels), max((len(r) for r in cells), default=0))
    width = max(label_w + n_cols * size + pad, 360)
    title_lines = _wrap(probe, title, font, width - 2 * pad, 3) if title else []
    top = line_h * len(title_lines) + 2 * pad if title else 0
    sheet = Image.new("RGB", (width, top + head + len(cells) * size + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, line in enumerate(title_lines):
        draw.text((pad, pad + j * line_h), line, fill=(0, 0, 0), font=font)
    for c, lines in enumerate(col_lines):
        for j, line in enumerate(lines):
            x = label_w + c * size + (size - draw.textlength(line, font=font)) / 2
            draw.text((x, top + pad + j * line_h), line, fill=(0, 0, 0), font=font)
    for r, row in enumerate(cells):
        y0 = top + head + r * size
        lines = row_lines[r] if r < len(row_lines) else []
        for j, line in enumerate(lines):
            draw.text((pad, y0 + (size - len(lines) * line_h) / 2 + j * line_h), line, fill=(0, 0, 0), font=font)
        for c, img in enumerate(row):
            if img is None:
                continue
            scale = size / max(img.size)  # up or down: small images are enlarged to the cell
            fitted = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                Image.Resampling.LANCZOS)
            sheet.paste(fitted.convert("RGB"), (label_w + c * size + (size - fitted.width) // 2,
                                                y0 + (size - fitted.height) // 2))
    return sheet
