"""Long captions for CLIP text encoders: kohya's 75-token chunks, encoded one by one and joined.

CLIP reads 77 positions (<BOS>, 75 tokens, <EOS>). A caption up to ``max_tokens`` (a multiple of 75) is
tokenized once to ``max_tokens + 2`` ids and cut into ``max_tokens / 75`` chunks of 75, each given the
caption's <BOS> in front and its last id (<EOS>, or padding) at the end; every chunk runs through the
encoder as its own 77-token sequence, and the hidden states are joined as <BOS>(chunk 1) + tokens 1..75 of
every chunk + the last position of the last chunk, so the U-Net reads ``max_tokens + 2`` positions. With a
padding id that is not <EOS> (SDXL's second tokenizer pads with "!"), a chunk cut in mid-caption gets an
<EOS> as its last id and an empty chunk reads <BOS> <EOS> <pad>... . The pooled vector (SDXL) is the first
chunk's. Source: kohya-ss/sd-scripts ``library/strategy_base.py`` ``TokenizeStrategy._get_input_ids`` and
``library/strategy_sd.py`` / ``strategy_sdxl.py`` ``encode_tokens`` (the older ``train_util.get_hidden_states``
/ ``get_hidden_states_sdxl``); 75 tokens keep the plain 77-token behaviour exactly.
"""

from __future__ import annotations

import torch

CHUNK_TOKENS = 75  # CLIP's 77 positions less <BOS> and <EOS>
MAX_TOKENS = 525  # seven chunks: the longest captions among the seed recipes (hyperfusion)


def token_limit_problem(max_tokens: int) -> str | None:
    """Why ``max_tokens`` cannot be a caption token limit, or None when it can."""
    allowed = ", ".join(str(n) for n in range(CHUNK_TOKENS, MAX_TOKENS + 1, CHUNK_TOKENS))
    if max_tokens % CHUNK_TOKENS == 2 and CHUNK_TOKENS <= max_tokens - 2 <= MAX_TOKENS:
        return (f"{max_tokens} counts <BOS> and <EOS>; the limit is in caption tokens: use {max_tokens - 2} "
                f"(one of {allowed})")
    if not CHUNK_TOKENS <= max_tokens <= MAX_TOKENS:
        return f"{max_tokens} is outside {CHUNK_TOKENS}..{MAX_TOKENS}: use one of {allowed}"
    if max_tokens % CHUNK_TOKENS:
        return (f"{max_tokens} is not a whole number of 75-token CLIP chunks: use one of {allowed} "
                f"(kohya would read only the first {max_tokens // CHUNK_TOKENS * CHUNK_TOKENS})")
    return None


def tokenize_chunks(tokenizer, captions: list[str], max_tokens: int = CHUNK_TOKENS) -> torch.Tensor:
    """Token ids (batch, max_tokens / 75, 77) for ``captions``, cut into chunks as kohya does."""
    problem = token_limit_problem(max_tokens)
    if problem:
        raise ValueError(f"max_token_length: {problem}")
    width = tokenizer.model_max_length
    ids = tokenizer(captions, padding="max_length", max_length=max_tokens + 2, truncation=True,
                    return_tensors="pt").input_ids
    if max_tokens + 2 == width:
        return ids[:, None]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = []
    for start in range(1, max_tokens + 1, width - 2):
        chunk = torch.cat([ids[:, :1], ids[:, start:start + width - 2], ids[:, -1:]], dim=1)
        if pad != eos:
            cut = (chunk[:, -2] != eos) & (chunk[:, -2] != pad)
            chunk[cut, -1] = eos  # the caption goes on past this chunk: close it with <EOS>
            chunk[chunk[:, 1] == pad, 1] = eos  # an empty chunk still has its <EOS>
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def join_chunks(hidden: torch.Tensor, batch: int) -> torch.Tensor:
    """Hidden states (batch·n, 77, d) of n chunks per caption -> (batch, n·75 + 2, d), kohya's concatenation."""
    width = hidden.shape[1]
    per_caption = hidden.reshape(batch, -1, hidden.shape[-1])  # (batch, n·77, d)
    if per_caption.shape[1] == width:
        return per_caption
    parts = [per_caption[:, :1]]  # <BOS> of the first chunk
    parts += [per_caption[:, start:start + width - 2] for start in range(1, per_caption.shape[1], width)]
    parts.append(per_caption[:, -1:])  # <EOS> (or padding) of the last chunk
    return torch.cat(parts, dim=1)


def first_chunks(values: torch.Tensor, batch: int) -> torch.Tensor:
    """One row per caption from rows per chunk (batch·n, ...): the first chunk's, as kohya pools."""
    return values.reshape(batch, -1, *values.shape[1:])[:, 0]
