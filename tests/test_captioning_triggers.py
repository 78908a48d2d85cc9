"""Trigger-word check: tokens, common pieces, placement, pairing, bad input, with a BPE tokenizer built from files
(real merges, so "redcar" splits into common words) and with the tiny SDXL model's own tokenizers (CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.captioning import triggers as T
from helpers.models.tiny import BOS, EOS, _bytes_to_unicode

# merges in CLIP order: earlier = more frequent; "red", "car", "woman", "outfit" are common words here
MERGES = [("r", "e"), ("re", "d"), ("c", "a"), ("ca", "r</w>"), ("w", "o"), ("wo", "m"), ("wom", "a"),
          ("woma", "n</w>"), ("o", "u"), ("ou", "t"), ("out", "f"), ("outf", "i"), ("outfi", "t</w>"),
          ("k", "n"), ("c", "r</w>"), ("f", "e"), ("fe", "m"), ("fem", "m"), ("femm", "e</w>")]


@pytest.fixture(scope="module")
def side(tmp_path_factory):
    from transformers import CLIPTokenizer

    folder = tmp_path_factory.mktemp("bpe")
    chars = _bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in MERGES] + [BOS, EOS]
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n",
                                       encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS, "model_max_length": 77,
         "tokenizer_class": "CLIPTokenizer"}), encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    return T.TextSide([tokenizer], [torch.randn(len(vocab), 16)], ["text encoder 1"])


def test_a_trigger_made_of_common_pieces_is_not_rare(side):
    captions = {f"{i}.png": f"a woman wearing redcar outfit number {i}" for i in range(3)}
    red, rare = T.check_triggers(captions, ["redcar", "kncr"], side)
    assert red.pieces == ["red", "car</w>"] and red.common_pieces == ["red", "car</w>"]
    assert red.verdict == "change" and "splits into common words (red + car)" in red.reasons[0]
    assert rare.pieces == ["kn", "cr</w>"] and rare.common_pieces == []  # two-letter fragments: rare
    single = T.check_triggers(captions, ["woman"], side)[0]
    assert single.verdict == "change" and "is a common word" in single.reasons[0]
    assert len(red.nearest["text encoder 1"]) == 5


def test_a_trigger_at_the_start_of_every_caption_is_flagged(side):
    start = {f"{i}.png": f"kncr, a woman with purple hair {i}" for i in range(4)}
    report = T.check_triggers(start, ["kncr"], side, known=["outfit"])[0]
    assert report.at_start == sorted(start) and report.verdict == "change"
    assert any("at the start of every caption" in r for r in report.reasons)
    placed = {f"{i}.png": f"a woman wearing kncr outfit {i}" for i in range(4)}
    good = T.check_triggers(placed, ["kncr"], side, known=["outfit"])[0]
    assert (good.verdict, good.reasons, good.known_beside) == ("good", [], 4)
    inferred = T.check_triggers(placed, ["kncr"], side)[0]  # no known token given: the word beside it
    assert inferred.known == "outfit" and inferred.verdict == "good"


def test_missing_unpaired_and_cut_off_triggers_are_reported(side):
    captions = {"a.png": "a femme kncr in a park", "b.png": "a woman in a park",
                "c.png": "a long caption " * 30 + "femme kncr"}
    report = T.check_triggers(captions, ["kncr"], side, known=["femme"])[0]
    assert report.missing == ["b.png"] and report.cut_off == ["c.png"] and report.known_beside == 2
    assert report.verdict == "change"
    assert any("past the 75-token limit in 1 captions" in r for r in report.reasons)
    assert any("missing in 1 of 3 captions (e.g. b.png)" in r for r in report.reasons)


def test_empty_or_too_long_triggers_are_refused(side):
    with pytest.raises(ValueError, match="no trigger word given"):
        T.check_triggers({"a.png": "x"}, [], side)
    with pytest.raises(ValueError, match="a trigger word is empty"):
        T.check_triggers({"a.png": "x"}, ["kncr", "  "], side)
    with pytest.raises(ValueError, match=r"is \d+ tokens, more than the 75-token caption limit"):
        T.check_triggers({"a.png": "x"}, ["zq" * 80], side)


def test_cli_checks_triggers_with_the_base_models_tokenizers(tmp_path, tiny_sdxl_dir, capsys):
    from helpers.captioning.__main__ import main

    folder = tmp_path / "ds"
    folder.mkdir()
    from PIL import Image

    for i, caption in enumerate(["zkps, a red circle", "zkps, a blue square"]):
        Image.new("RGB", (32, 32)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption)
    before = sorted(p.name for p in folder.iterdir())
    args = ["--workspace", str(tmp_path / "ws"), "--json", "triggers", str(folder), "--trigger", "zkps",
            "--model", str(tiny_sdxl_dir)]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)[0]
    assert report["pieces"] == ["z", "k", "p", "s</w>"]  # the tiny model's byte-level vocabulary
    assert report["at_start"] == ["0.png", "1.png"] and report["verdict"] == "change"
    assert set(report["nearest"]) == {"text encoder 1", "text encoder 2"}  # SDXL: both encoders' tables
    assert main(args[:-4] + ["--trigger", " ", "--model", str(tiny_sdxl_dir)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(args[:-2] + ["--model", str(tmp_path / "no-such-model")]) == 2
    assert sorted(p.name for p in folder.iterdir()) == before  # a check changes nothing
    assert Path(tmp_path / "ws").is_dir()
