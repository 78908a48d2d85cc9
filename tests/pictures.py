"""Checks that a picture shows something: the right size, not a blank canvas, the expected ink drawn.

A chart "is not None" proves nothing; these look at the pixels. Colours are the ones ``helpers.ui.charts``
draws with (matplotlib's first line colour, the bar and histogram fills).
"""

from __future__ import annotations

import io

from PIL import Image, ImageChops

LINE = (31, 119, 180)  # matplotlib's C0, the first line of a line chart
BAR = (76, 114, 176)  # charts.bar_chart
HIST = (85, 168, 104)  # charts.histogram


def as_image(picture) -> Image.Image:
    """A PIL image from an image or PNG bytes (an ipywidgets Image's value)."""
    img = picture if isinstance(picture, Image.Image) else Image.open(io.BytesIO(picture))
    return img.convert("RGB")


def ink(picture, colour: tuple[int, int, int], tolerance: int = 20) -> int:
    """How many pixels are within ``tolerance`` (per channel) of ``colour``."""
    img = as_image(picture)
    bands = [band.point(lambda v, c=c: 255 if abs(v - c) <= tolerance else 0) for band, c in
             zip(img.split(), colour, strict=True)]
    both = ImageChops.multiply(ImageChops.multiply(bands[0], bands[1]), bands[2])
    return sum(both.histogram()[1:])


def assert_picture(picture, size: tuple[int, int] | None = None, colour: tuple[int, int, int] | None = None,
                   min_ink: int = 50) -> Image.Image:
    """The picture has ``size``, is not one flat colour, and (given ``colour``) shows at least ``min_ink`` pixels of it."""
    img = as_image(picture)
    if size is not None:
        assert img.size == size, f"picture is {img.size}, expected {size}"
    blank = Image.new("RGB", img.size, img.getpixel((0, 0)))
    assert ImageChops.difference(img, blank).getbbox() is not None, "the picture is a blank canvas"
    if colour is not None:
        found = ink(img, colour)
        assert found >= min_ink, f"only {found} pixels of {colour} drawn (expected >= {min_ink})"
    return img
