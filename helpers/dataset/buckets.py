"""Aspect-ratio buckets with kohya sd-scripts' semantics: which (width, height) bucket each image trains in.

Owned here (not by the trainer) because the dataset report shows the buckets training will use; the trainer
imports these functions, so the two always agree.
"""

from __future__ import annotations

import math


def make_buckets(resolution: int, min_side: int, max_side: int, step: int) -> list[tuple[int, int]]:
    """Kohya's predefined (width, height) buckets of area ≤ resolution².

    Source: sd-scripts ``library/model_util.make_bucket_resolutions``: the square, then for each width from
    ``min_side`` in ``step``s, height = min(max_side, ⌊area / width / step⌋ · step), both orientations.
    """
    area = resolution * resolution
    side = int(math.sqrt(area) // step * step)
    buckets = {(side, side)}
    width = min_side
    while width <= max_side:
        height = min(max_side, int((area // width) // step * step))
        if height >= min_side:
            buckets.add((width, height))
            buckets.add((height, width))
        width += step
    return sorted(buckets)


def _round_to_step(x: float, step: int) -> int:
    x = int(x + 0.5)
    return x - x % step


def select_bucket(width: int, height: int, buckets: list[tuple[int, int]] | None, *, resolution: int,
                  step: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(bucket (w, h), resized image size (w, h)) for an image; the resized image covers the bucket.

    Source: sd-scripts ``train_util.BucketManager.select_bucket``. With a bucket list: an exact size wins,
    else the smallest aspect-ratio error; the image is scaled so it covers the bucket. With ``buckets=None``
    (no-upscale): images larger than resolution² shrink keeping their aspect ratio (the rounding of width
    or height with the smaller aspect error wins), smaller ones keep their size; the bucket is the resized
    size floored to ``step`` (cropped, never padded).
    """
    aspect = width / height
    if buckets is not None:
        if (width, height) in buckets:
            bucket = (width, height)
        else:
            bucket = min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))
        scale = bucket[1] / height if aspect > bucket[0] / bucket[1] else bucket[0] / width
        resized = (max(bucket[0], int(width * scale + 0.5)), max(bucket[1], int(height * scale + 0.5)))
        return bucket, resized
    area = resolution * resolution
    if width * height > area:
        rw = math.sqrt(area * aspect)
        rh = area / rw
        bw = _round_to_step(rw, step)
        bh_w = _round_to_step(bw / aspect, step)
        bh = _round_to_step(rh, step)
        bw_h = _round_to_step(bh * aspect, step)
        if bh_w and bh and abs(bw / bh_w - aspect) < abs(bw_h / bh - aspect):
            resized = (bw, int(bw / aspect + 0.5))
        else:
            resized = (int(bh * aspect + 0.5), bh)
    else:
        resized = (width, height)
    bucket = (resized[0] - resized[0] % step, resized[1] - resized[1] % step)
    return bucket, resized

