"""Prompts longer than CLIP's 75 tokens, encoded as the trainer encodes its captions (kohya's 75-token chunks).

diffusers' pipelines cut a prompt at 77 positions and warn; A1111 and ComfyUI read long prompts in 75-token
chunks, and our trainer conditions on long captions the same way (``helpers.models.prompt_chunks``). When any
prompt or negative prompt of a batch is longer than one chunk, the batch is encoded here, with the family's own
``tokenize_captions`` / ``encode_tokens`` (the training code path), to as many chunks as the longest needs (at most
``MAX_TOKENS``), and handed to the pipeline as ``prompt_embeds``. A batch of short prompts is left to diffusers
(identical to before); for a short prompt the two paths give the same embeddings (tested).
"""

from __future__ import annotations

import math

import torch

from helpers.models import sd15, sdxl
from helpers.models.prompt_chunks import CHUNK_TOKENS, MAX_TOKENS


def token_count(tokenizer, text: str) -> int:
    """Tokens of ``text`` without <BOS>/<EOS>."""
    return len(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])


def chunk_limit(tokenizer, texts: list[str]) -> int:
    """Caption tokens to encode ``texts`` with: a multiple of 75 that holds the longest, at most ``MAX_TOKENS``."""
    longest = max((token_count(tokenizer, t) for t in texts), default=0)
    return min(MAX_TOKENS, max(1, math.ceil(longest / CHUNK_TOKENS)) * CHUNK_TOKENS)


def too_long(tokenizer, texts: list[str]) -> list[str]:
    """The texts that are cut even in chunks (over ``MAX_TOKENS`` tokens; the encoder keeps their first
    ``MAX_TOKENS``, as the trainer does with a caption over its limit)."""
    return [t for t in texts if token_count(tokenizer, t) > MAX_TOKENS]


def long_prompt_embeds(arch: str, text_encoders: list, tokenizers: list, prompts: list[str],
                       negatives: list[str], *, clip_skip: int = 1, zeros_for_empty_negative: bool = False,
                       force: bool = False) -> dict[str, torch.Tensor] | None:
    """Pipeline keyword arguments (``prompt_embeds`` …) for a batch, or None when every text fits one chunk.

    ``zeros_for_empty_negative``: SDXL's ``force_zeros_for_empty_prompt`` (no negative prompt → zero embeddings),
    as its pipeline does. ``force`` encodes even short batches (for the equivalence test).
    """
    texts = [*prompts, *negatives]
    limit = chunk_limit(tokenizers[0], texts)
    if limit == CHUNK_TOKENS and not force:
        return None
    family = sdxl if arch == "sdxl" else sd15

    def encode(batch: list[str]) -> dict[str, torch.Tensor]:
        ids = family.tokenize_captions(tokenizers, batch, limit)
        with torch.no_grad():
            if arch == "sdxl":
                return family.encode_tokens(text_encoders, ids)
            return family.encode_tokens(text_encoders, ids, clip_skip=clip_skip)

    positive = encode(prompts)
    no_negative = not any(n.strip() for n in negatives)
    if no_negative and zeros_for_empty_negative:
        negative = {k: torch.zeros_like(v) for k, v in positive.items()}
    else:
        negative = encode(negatives if not no_negative else [""] * len(prompts))
    kwargs = {"prompt_embeds": positive["hidden"], "negative_prompt_embeds": negative["hidden"]}
    if arch == "sdxl":
        kwargs["pooled_prompt_embeds"] = positive["pooled"]
        kwargs["negative_pooled_prompt_embeds"] = negative["pooled"]
    return kwargs
