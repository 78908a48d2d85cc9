"""Colour jitter drawn per sample: brightness, contrast, saturation and hue, applied to the decoded image.

The factors come from the sample's own generator (seeded by seed, epoch and position in ``training.data``),
so a resumed run jitters every image exactly as an uninterrupted one. Ranges follow torchvision's
``ColorJitter`` (factor ~ U(1 - s, 1 + s), hue shift ~ U(-h, h) of a turn); kohya's ``color_aug`` is a hue
shift of up to 8 of OpenCV's 180 hue steps, i.e. ``hue_jitter ≈ 0.044``. A jittered image has no fixed
latent, so colour jitter and the latent cache exclude each other (``TrainConfig.check``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

HUE_STEPS = 256  # PIL's HSV mode stores hue in one byte


@dataclass(frozen=True)
class ColorJitter:
    """One sample's colour change: enhancement factors (1 = unchanged) and a hue shift in PIL hue steps."""

    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue_shift: int = 0


def draw_color_jitter(rng: random.Random, strength: float, hue: float) -> ColorJitter | None:
    """The jitter of one sample: brightness, contrast, saturation ~ U(1 - strength, 1 + strength), hue shift
    ~ U(-hue, hue) of a turn; None when both are 0 (no draws, so other choices keep their random numbers)."""
    if not strength and not hue:
        return None
    factors = [rng.uniform(1 - strength, 1 + strength) if strength else 1.0 for _ in range(3)]
    shift = round(rng.uniform(-hue, hue) * HUE_STEPS) if hue else 0
    return ColorJitter(*factors, hue_shift=shift)


def apply_color_jitter(image, jitter: ColorJitter):
    """An RGB PIL image with ``jitter`` applied (brightness, contrast, saturation, then hue)."""
    from PIL import Image, ImageEnhance

    for enhancer, factor in ((ImageEnhance.Brightness, jitter.brightness), (ImageEnhance.Contrast, jitter.contrast),
                             (ImageEnhance.Color, jitter.saturation)):
        if factor != 1.0:
            image = enhancer(image).enhance(factor)
    if jitter.hue_shift % HUE_STEPS:
        hue, sat, val = image.convert("HSV").split()
        hue = hue.point(lambda h: (h + jitter.hue_shift) % HUE_STEPS)
        image = Image.merge("HSV", (hue, sat, val)).convert("RGB")
    return image
