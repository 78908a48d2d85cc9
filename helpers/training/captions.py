"""Per-step captions: what the text encoder reads for one sample, drawn from the sample's own generator.

Owns the caption hook the dataset calls for every sample (shuffle, keep_tokens, tag and caption dropout).
Every random choice comes from the generator ``training.data`` seeds by (seed, epoch, position), so a
sample's caption depends only on where it is in the run: a resumed run sees the captions an uninterrupted
one would have seen.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable


def process_caption(caption: str, rng: random.Random, *, shuffle: bool = False, keep_tokens: int = 0,
                    separator: str = ",", tag_dropout: float = 0.0, caption_dropout: float = 0.0) -> str:
    """The caption hook: caption dropout -> split kept/free tags -> shuffle -> tag dropout -> join ", ".

    Source: order of sd-scripts ``BaseDataset.process_caption``. Draws from ``rng`` in a fixed order so a
    sample's caption depends only on its seed.
    """
    if caption_dropout and rng.random() < caption_dropout:
        return ""
    if not (shuffle or tag_dropout):
        return caption
    tags = [t.strip() for t in caption.split(separator) if t.strip()]
    kept, free = tags[:keep_tokens], tags[keep_tokens:]
    if shuffle:
        rng.shuffle(free)
    if tag_dropout:
        free = [t for t in free if rng.random() >= tag_dropout]
    return ", ".join(kept + free)


CaptionHook = Callable[[str, random.Random], str]


def caption_hook(shuffle: bool, keep_tokens: int, separator: str, tag_dropout: float,
                 caption_dropout: float) -> CaptionHook:
    """``process_caption`` with these options bound (picklable, for loader workers)."""
    return functools.partial(process_caption, shuffle=shuffle, keep_tokens=keep_tokens, separator=separator,
                             tag_dropout=tag_dropout, caption_dropout=caption_dropout)
