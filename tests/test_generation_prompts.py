"""Kohya-syntax prompt lines and files: every flag parses; a bad line names its file, line number and problem."""

from __future__ import annotations

import pytest

from helpers.config import from_dict
from helpers.generation.prompts import PromptFileError, PromptSpec, parse_prompt_line, read_prompts
from helpers.generation.training_samples import SamplingConfig


def test_every_flag_parses(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# sample prompts for the run\n"
                 "\n"
                 "masterpiece, a cat on a sofa --n lowres, blurry --w 832 --h 1216 --d 42 --s 28 --l 6.5 "
                 "--ss dpmsolver++\n"
                 "a plain prompt\n"
                 "  an indented one --ss euler_a --n\n", encoding="utf-8")
    a, b, c = read_prompts(f)
    assert a == PromptSpec(prompt="masterpiece, a cat on a sofa", negative_prompt="lowres, blurry", width=832,
                           height=1216, seed=42, steps=28, cfg=6.5, sampler="DPM++ 2M")
    assert b == PromptSpec(prompt="a plain prompt")
    assert c.prompt == "an indented one" and c.sampler == "Euler a" and c.negative_prompt == ""
    assert parse_prompt_line(a.to_line()) == a
    assert a.overrides() == {"prompt": "masterpiece, a cat on a sofa", "negative_prompt": "lowres, blurry",
                             "width": 832, "height": 1216, "seed": 42, "steps": 28, "cfg": 6.5,
                             "sampler": "DPM++ 2M"}


@pytest.mark.parametrize("line, expected", [
    ("a cat --s 0", "steps must be between 1 and 1000"),
    ("a cat --w 1000.5", "width must be a whole number"),
    ("a cat --h 1001", "height must be a multiple of 8"),
    ("a cat --l lots", "CFG scale must be a number"),
    ("a cat --ss Euler b", "unknown sampler 'Euler b' (did you mean 'Euler a'?)"),
    ("a cat --x 3", "--x: unknown option; known options: --n"),
    ("a cat --cn control.png", "ControlNet image is not supported"),
    ("a cat --d", "--d needs a value"),
    ("--n only a negative", "starts with an option but has no prompt"),
])
def test_bad_line_names_the_line(tmp_path, line, expected):
    f = tmp_path / "p.txt"
    f.write_text(f"first prompt\n# comment\n{line}\n", encoding="utf-8")
    with pytest.raises(PromptFileError) as exc:
        read_prompts(f)
    assert f"{f}, line 3: " in str(exc.value) and expected in str(exc.value)


def test_prompt_file_problems(tmp_path):
    with pytest.raises(PromptFileError, match="no such prompt file"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "p.toml").write_text("[prompt]\n", encoding="utf-8")
    with pytest.raises(PromptFileError, match=r"plain text \(\.txt\)"):
        read_prompts(tmp_path / "p.toml")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(PromptFileError, match="not UTF-8"):
        read_prompts(tmp_path / "latin1.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(PromptFileError, match="no prompts"):
        read_prompts(tmp_path / "empty.txt")


def test_sampling_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("ok\nbroken --s many\n", encoding="utf-8")
    cfg = from_dict(SamplingConfig, {"prompts": ["fine", "also fine --w 77"], "prompt_file": str(bad),
                                     "sampler": "Eular a", "width": 100})
    problems = cfg.problems()
    assert "line 2" in problems["prompts"] and "multiple of 8" in problems["prompts"]
    assert "line 2" in problems["prompt_file"] and "steps must be a whole number" in problems["prompt_file"]
    assert "did you mean 'Euler a'" in problems["sampler"]
    assert "multiple of 8" in problems["width"]
    assert SamplingConfig(prompts=["a cat --s 20"]).problems() == {}
