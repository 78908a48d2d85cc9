"""Long prompts and clip skip on the tiny text encoders: kohya's chunking, checked against hand-built encodings.

The tiny tokenizer is byte-level (one token per character), so a 150-character caption is 150 tokens.
"""

from __future__ import annotations

import pytest
import torch

from helpers.models.prompt_chunks import token_limit_problem, tokenize_chunks
from helpers.models.tiny import build_tiny_pipeline
from helpers.training.components import model_family

LONG = "a" * 70 + ", " + "b" * 71 + ", " + "c" * 7  # 150 tokens (spaces are not tokens): two full chunks


@pytest.fixture(scope="module")
def sdxl():
    return build_tiny_pipeline("sdxl", seed=1)


@pytest.fixture(scope="module")
def sd15():
    return build_tiny_pipeline("sd15", seed=2)


def single(tok, ids: list[int]) -> torch.Tensor:
    """One 77-token row: <BOS> ids <EOS> then the tokenizer's padding, built by hand."""
    row = [tok.bos_token_id, *ids, tok.eos_token_id]
    return torch.tensor([row + [tok.pad_token_id] * (77 - len(row))])


def test_tokenize_chunks_follows_kohya(sdxl):
    tok1, tok2 = sdxl.tokenizer, sdxl.tokenizer_2  # TE1 pads with <EOS>, TE2 with "!"
    body = tok2(LONG, add_special_tokens=False).input_ids
    assert len(body) == 150
    ids1, ids2 = tokenize_chunks(tok1, [LONG], 225)[0], tokenize_chunks(tok2, [LONG], 225)[0]
    assert ids1.shape == ids2.shape == (3, 77)
    eos, bos, pad = tok2.eos_token_id, tok2.bos_token_id, tok2.pad_token_id
    # every chunk: <BOS>, 75 caption tokens, and an <EOS> closing a chunk the caption runs past
    assert ids2[0].tolist() == [bos, *body[:75], eos] and ids2[1].tolist() == [bos, *body[75:], eos]
    assert ids2[2].tolist() == [bos, eos] + [pad] * 75  # empty chunk: <BOS> <EOS> <pad> ...
    assert tokenize_chunks(tok2, ["short"], 225)[0, 2].tolist() == [bos, eos] + [pad] * 75  # even all padding
    assert ids1[2].tolist() == [bos] + [eos] * 76 and ids1[0, -1] == eos
    # the default limit is plain CLIP: one chunk, truncated
    assert torch.equal(tokenize_chunks(tok2, [LONG])[:, 0], tok2([LONG], padding="max_length", max_length=77,
                                                                   truncation=True, return_tensors="pt").input_ids)


def test_sdxl_long_prompt_is_kohyas_concatenation_of_chunk_encodings(sdxl):
    tok1, tok2, te1, te2 = sdxl.tokenizer, sdxl.tokenizer_2, sdxl.text_encoder, sdxl.text_encoder_2
    long, short = model_family("sdxl", max_tokens=225), model_family("sdxl")
    with torch.no_grad():
        out = long.encode_tokens([te1, te2], long.tokenize_captions([tok1, tok2], [LONG]))
        cut = short.encode_tokens([te1, te2], short.tokenize_captions([tok1, tok2], [LONG]))
        body = tok1(LONG, add_special_tokens=False).input_ids
        # by hand: each chunk alone through each encoder, <BOS> + 75 tokens of each chunk + last position
        parts1 = [te1(single(tok1, body[:75]), output_hidden_states=True),
                  te1(single(tok1, body[75:]), output_hidden_states=True),
                  te1(single(tok1, []), output_hidden_states=True)]
        empty2 = torch.tensor([[tok2.bos_token_id, tok2.eos_token_id] + [tok2.pad_token_id] * 75])
        parts2 = [te2(single(tok2, body[:75]), output_hidden_states=True),
                  te2(single(tok2, body[75:]), output_hidden_states=True),
                  te2(empty2, output_hidden_states=True)]
    expected = [torch.cat([parts[0].hidden_states[-2][:, :1]] + [p.hidden_states[-2][:, 1:76] for p in parts]
                          + [parts[2].hidden_states[-2][:, 76:]], dim=1) for parts in (parts1, parts2)]
    assert out["hidden"].shape == (1, 227, 32 + 48) and cut["hidden"].shape == (1, 77, 80)
    torch.testing.assert_close(out["hidden"], torch.cat(expected, dim=-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["pooled"], parts2[0].text_embeds, rtol=1e-5, atol=1e-6)  # first chunk's
    # the tokens past 75 change what the U-Net reads; truncated, a different tail reads the same
    other = LONG[:100] + "d" * 50
    with torch.no_grad():
        out2 = long.encode_tokens([te1, te2], long.tokenize_captions([tok1, tok2], [other]))
        cut2 = short.encode_tokens([te1, te2], short.tokenize_captions([tok1, tok2], [other]))
    assert torch.equal(cut["hidden"], cut2["hidden"])
    assert not torch.allclose(out["hidden"], out2["hidden"], atol=1e-3)
    torch.testing.assert_close(out["hidden"][:, :76], cut["hidden"][:, :76])  # CLIP is causal: chunk 1 = cut


def test_sd15_long_prompt_and_clip_skip(sd15):
    tok, te = sd15.tokenizer, sd15.text_encoder
    body = tok(LONG, add_special_tokens=False).input_ids
    with torch.no_grad():
        plain = model_family("sd15").encode_tokens([te], model_family("sd15").tokenize_captions([tok], [LONG]))
        reference = te(tok([LONG], padding="max_length", max_length=77, truncation=True,
                           return_tensors="pt").input_ids).last_hidden_state
        long = model_family("sd15", max_tokens=150)
        out = long.encode_tokens([te], long.tokenize_captions([tok], [LONG]))
        a, b = te(single(tok, body[:75])).last_hidden_state, te(single(tok, body[75:])).last_hidden_state
        skip = model_family("sd15", max_tokens=150, clip_skip=2)
        skipped = skip.encode_tokens([te], skip.tokenize_captions([tok], [LONG]))
        states = [te(single(tok, part), output_hidden_states=True).hidden_states[-2] for part in (body[:75], body[75:])]
        penultimate = [te.final_layer_norm(s) for s in states]
    assert torch.equal(plain["hidden"], reference)  # 75 tokens: exactly the plain CLIP encoding
    torch.testing.assert_close(out["hidden"], torch.cat([a[:, :76], b[:, 1:77]], dim=1), rtol=1e-5, atol=1e-6)
    assert out["hidden"].shape == (1, 152, 32)
    assert not torch.allclose(out["hidden"][:, 76:], plain["hidden"][:, :76], atol=1e-3)
    torch.testing.assert_close(skipped["hidden"], torch.cat([penultimate[0][:, :76], penultimate[1][:, 1:77]], dim=1),
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(skipped["hidden"], out["hidden"], atol=1e-3)  # clip skip 2 reads another layer
    with pytest.raises(ValueError, match="more than this text encoder's 2 layers"):
        model_family("sd15", clip_skip=4).encode_tokens([te], plain_ids(tok))


def plain_ids(tok) -> list[torch.Tensor]:
    return [tokenize_chunks(tok, ["x"])]


def test_token_limits_and_clip_skip_on_sdxl_are_refused():
    assert token_limit_problem(75) is None and token_limit_problem(525) is None
    assert "use 225" in token_limit_problem(227)
    assert "kohya would read only the first 225" in token_limit_problem(255)
    from helpers.config import ConfigError

    with pytest.raises(ConfigError, match="captions.clip_skip"):
        model_family("sdxl", clip_skip=2)
    with pytest.raises(ValueError, match="max_token_length"):
        tokenize_chunks(None, ["x"], 100)
