"""Per-step captions: every option changes what the text encoder reads, drawn only from the sample's seed.

Each test would fail with its option ignored: kept parts always first, implied tags dropped at the configured
rate over many seeds, the tag/caption mix at its chances, and so on.
"""

from __future__ import annotations

import json
import pickle
import random
from collections import Counter

import pytest

from helpers.config import ConfigError, from_dict, load_config, validate
from helpers.training import captions as C
from helpers.training.config import TrainConfig
from helpers.training.implications import ImplicationError, load_implications, parse_implications

SEEDS = range(2000)


def run(cfg: C.CaptionConfig, text: str = "", *, source: C.CaptionSource | None = None, implications=None,
        seeds=SEEDS, epoch: int = 0) -> list[str]:
    """The captions of one image over many samples (one generator per seed, as the dataset makes them)."""
    pipeline = C.CaptionPipeline([source or C.CaptionSource(text)], cfg, implications)
    return [pipeline(0, epoch, random.Random(seed)) for seed in seeds]


def tags_of(caption: str) -> list[str]:
    return [t for t in caption.split(", ") if t]


# ---------------------------------------------------------------- keep separator, keep_tokens, fixed tags


def test_keep_separator_never_reaches_the_text_encoder_and_keeps_head_and_tail():
    text = "trigger, 1girl ||| red, blue, green, yellow, pink ||| masterpiece, safe"
    # no option at all: today's bug was the literal "|||" in the caption
    assert run(C.CaptionConfig(), text, seeds=[0]) == ["trigger, 1girl, red, blue, green, yellow, pink, masterpiece, safe"]
    out = run(C.CaptionConfig(shuffle_caption=True, tag_dropout=0.3), text)
    assert all("|||" not in c for c in out)
    for caption in out:
        tags = tags_of(caption)
        assert tags[:2] == ["trigger", "1girl"] and tags[-2:] == ["masterpiece", "safe"]
    middles = {tuple(tags_of(c)[2:-2]) for c in out}
    assert len(middles) > 100  # the middle is shuffled and thinned
    # keep_tokens applies when the caption has no separator
    out = run(C.CaptionConfig(shuffle_caption=True, keep_tokens=2), "a, b, c, d, e, f", seeds=range(50))
    assert all(tags_of(c)[:2] == ["a", "b"] for c in out) and len(set(out)) > 10


def test_fixed_tags_stay_in_place_while_general_tags_shuffle_and_drop():
    text = "1girl, solo, long hair, smile, sitting, outdoors, masterpiece, newest, safe"
    cfg = C.CaptionConfig(shuffle_caption=True, keep_tokens=1, tag_dropout=0.15,
                          fixed_tags=["*quality", "masterpiece", "newest", "recent", "safe", "nsfw"])
    out = run(cfg, text)
    for caption in out:
        tags = tags_of(caption)
        assert tags[0] == "1girl" and tags[-3:] == ["masterpiece", "newest", "safe"]
    general = Counter(t for c in out for t in tags_of(c)[1:-3])
    assert 0.8 < general["smile"] / len(out) < 0.9  # 15 % dropped
    assert len({tuple(tags_of(c)[1:-3]) for c in out}) > 200
    # without fixed tags the quality tag moves and drops like any other
    loose = run(C.CaptionConfig(shuffle_caption=True, keep_tokens=1, tag_dropout=0.15), text, seeds=range(200))
    assert sum(tags_of(c)[-3:] != ["masterpiece", "newest", "safe"] for c in loose) > 150


def test_important_tags_come_first_and_shuffle_among_themselves():
    text = "keep ||| a, b, star one, c, d, star two, e"
    out = run(C.CaptionConfig(shuffle_caption=True, important_tags=["star*"]), text, seeds=range(300))
    for caption in out:
        tags = tags_of(caption)
        assert tags[0] == "keep" and set(tags[1:3]) == {"star one", "star two"}
    assert {tags_of(c)[1] for c in out} == {"star one", "star two"}
    # moved first even without shuffling, the rest keeps its order
    assert run(C.CaptionConfig(important_tags=["star two"]), text, seeds=[0]) == [
        "keep, star two, a, b, star one, c, d, e"]


# ---------------------------------------------------------------- dropouts


def test_caption_dropout_by_chance_and_every_n_epochs():
    out = run(C.CaptionConfig(caption_dropout=0.1), "a, b, c")
    assert 0.08 < out.count("") / len(out) < 0.12
    cfg = C.CaptionConfig(caption_dropout_every_n_epochs=3, caption_prefix="trigger")
    by_epoch = {e: run(cfg, "a, b", seeds=range(20), epoch=e) for e in range(7)}
    # kohya counts epochs from 1: the 3rd and 6th epochs (0-based 2 and 5) train unconditionally, prefix too
    assert [e for e, caps in by_epoch.items() if all(c == "" for c in caps)] == [2, 5]
    assert all(c == "trigger, a, b" for e in (0, 1, 3, 4, 6) for c in by_epoch[e])


def test_short_captions_drop_most_tags_some_of_the_time():
    text = "keep ||| " + ", ".join(f"t{i}" for i in range(8))
    always = run(C.CaptionConfig(short_caption_chance=1.0, short_caption_dropout=0.75), text, seeds=range(100))
    assert all(len(tags_of(c)) == 1 + 2 and tags_of(c)[0] == "keep" for c in always)  # 6 of 8 dropped
    assert len(set(always)) > 10
    sometimes = run(C.CaptionConfig(short_caption_chance=0.05, short_caption_dropout=0.75), text, seeds=range(4000))
    short = sum(len(tags_of(c)) == 3 for c in sometimes) / 4000
    assert 0.04 < short < 0.06 and all(len(tags_of(c)) in (3, 9) for c in sometimes)


def write_implications(path, text: str):
    path.write_text(text, encoding="utf-8")
    return load_implications(path)


def test_implied_tags_drop_at_the_configured_rate(tmp_path):
    implications = write_implications(tmp_path / "imp.csv", (
        "id,antecedent_name,consequent_name,created_at,status\n"
        "1,huge_breasts,large_breasts,2020,active\n"
        "2,large_breasts,breasts,2020,active\n"
        "3,cat_ears,animal_ears,2020,deleted\n"))
    cfg = C.CaptionConfig(implication_dropout=0.4)
    out = run(cfg, "huge breasts, large breasts, breasts, cat ears, animal ears", implications=implications)
    counts = Counter(t for c in out for t in tags_of(c))
    n = len(out)
    assert counts["huge breasts"] == n and counts["cat ears"] == counts["animal ears"] == n  # deleted row ignored
    assert 0.56 < counts["large breasts"] / n < 0.64 and 0.56 < counts["breasts"] / n < 0.64  # transitive
    # a tag nothing in the caption implies always stays
    alone = run(cfg, "breasts, smile", implications=implications, seeds=range(200))
    assert all(c == "breasts, smile" for c in alone)
    # kept tags are never dropped, even when implied
    kept = run(cfg, "breasts ||| large breasts", implications=implications, seeds=range(200))
    assert all(tags_of(c)[0] == "breasts" for c in kept)


def test_implications_file_errors_name_the_file_line_and_tags(tmp_path):
    assert parse_implications("a,b\nb,c\n", "x") == [("a", "b"), ("b", "c")]  # no header: first two columns
    with pytest.raises(ImplicationError, match=r"cycle: big breasts -> breasts -> big breasts"):
        write_implications(tmp_path / "cycle.csv", "antecedent,consequent\nbig_breasts,breasts\nbreasts,big breasts\n")
    with pytest.raises(ImplicationError, match="cycle: a -> a"):
        write_implications(tmp_path / "self.csv", "a,A\n")
    with pytest.raises(ImplicationError, match=r"bad\.csv, line 3: expected antecedent,consequent"):
        write_implications(tmp_path / "bad.csv", "a,b\n\nc\n")
    with pytest.raises(ImplicationError, match="not found"):
        load_implications(tmp_path / "missing.csv")


# ---------------------------------------------------------------- tags and natural captions


def test_mixing_tags_and_captions_at_the_given_chances():
    source = C.CaptionSource("ignored", tags=("1girl", "solo", "smile"), keep=1, prose="A girl smiles.")
    cfg = C.CaptionConfig(mix_tags=0.7, mix_caption=0.2, mix_both=0.1, shuffle_caption=True)
    out = run(cfg, source=source, seeds=range(4000))
    kinds = Counter("both" if "A girl" in c and "solo" in c else "caption" if "A girl" in c else "tags" for c in out)
    assert abs(kinds["tags"] / 4000 - 0.7) < 0.025 and abs(kinds["caption"] / 4000 - 0.2) < 0.02
    assert abs(kinds["both"] / 4000 - 0.1) < 0.015
    both = [c for c in out if "A girl" in c and "solo" in c]
    assert any(c.startswith("A girl") for c in both) and any(c.startswith("1girl") for c in both)
    assert all(tags_of(c.replace("A girl smiles., ", ""))[0] == "1girl" for c in out if "solo" in c)  # kept tag
    # a record without kept tags keeps the configured first keep_tokens
    unkept = C.CaptionSource("x", tags=("1girl", "solo", "smile", "sky"), prose="")
    assert all(c.startswith("1girl, ") for c in run(C.CaptionConfig(shuffle_caption=True, keep_tokens=1),
                                                     source=unkept, seeds=range(50)))
    # an image with only one kind always uses it
    assert set(run(cfg, source=C.CaptionSource("x", tags=(), prose="Only prose."), seeds=range(50))) == {"Only prose."}


def test_records_are_read_from_captions_json_and_a_hand_edited_txt_wins(tmp_path):
    from helpers.captioning.sidecar import CaptionRecord
    from helpers.changes import sha256_text

    def image(name: str, txt: str, record: CaptionRecord | None):
        path = tmp_path / f"{name}.png"
        path.write_bytes(b"")
        (tmp_path / f"{name}.txt").write_text(txt, encoding="utf-8")
        if record is not None:
            (tmp_path / f"{name}.captions.json").write_text(record.to_json(), encoding="utf-8")
        return path, txt

    rendered = "A cat., cat, sitting"
    record = CaptionRecord(tags=["cat", "sitting"], keep=1, captions={"florence": "A cat."},
                           txt_sha256=sha256_text(rendered))
    files = [image("a", rendered, record),
             image("b", "edited by hand", CaptionRecord(tags=["dog"], txt_sha256=sha256_text("dog"))),
             image("c", "no record, here", None)]
    cfg = C.CaptionConfig(mix_tags=0.0, mix_caption=1.0, caption_prefix="sks")
    with pytest.warns(UserWarning, match="1 caption file"):
        pipeline = C.build_caption_pipeline(cfg, [p for p, _ in files], [t for _, t in files])
    rng = random.Random(0)
    assert [pipeline(i, 0, rng) for i in range(3)] == ["sks, A cat.", "sks, edited by hand", "sks, no record, here"]
    (tmp_path / "a.captions.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(ValueError, match=r"a\.captions\.json: not valid JSON"):
        C.build_caption_pipeline(cfg, [p for p, _ in files], [t for _, t in files])
    # without mixing the records are not read at all: the caption file is the caption
    plain = C.build_caption_pipeline(C.CaptionConfig(), [p for p, _ in files], [t for _, t in files])
    assert plain(0, 0, rng) == rendered


# ---------------------------------------------------------------- text edits


def test_prefix_suffix_and_wildcards():
    cfg = C.CaptionConfig(caption_prefix="sks style,", caption_suffix=", by me", shuffle_caption=True,
                          wildcards=True)
    out = run(cfg, "{red|green|blue} hair, smile, {{braces}}, sky", seeds=range(300))
    assert all(c.startswith("sks style, ") and c.endswith(", by me") for c in out)
    hair = Counter(t for c in out for t in tags_of(c) if t.endswith("hair"))
    assert set(hair) == {"red hair", "green hair", "blue hair"} and min(hair.values()) > 60
    assert all("{braces}" in c and "|" not in c for c in out)
    assert run(C.CaptionConfig(), "{red|green} hair", seeds=[0]) == ["{red|green} hair"]  # off: text as written


def test_captions_depend_only_on_the_sample_and_survive_pickling():
    cfg = C.CaptionConfig(shuffle_caption=True, tag_dropout=0.2, wildcards=True, short_caption_chance=0.3)
    pipeline = C.CaptionPipeline([C.CaptionSource("{a|b}, c ||| d, e, f, g, h")], cfg)
    copy = pickle.loads(pickle.dumps(pipeline))  # what a loader worker holds
    first = [pipeline(0, e, random.Random(s)) for e in range(3) for s in range(50)]
    assert first == [copy(0, e, random.Random(s)) for e in range(3) for s in range(50)]
    assert len(set(first)) > 30


# ---------------------------------------------------------------- config


def test_config_errors_name_the_field_before_any_model_loads(tmp_path):
    def problems(**captions) -> dict[str, str]:
        return validate(from_dict(TrainConfig, {"model": {"base_model": "x", "arch": "sdxl"},
                                                "data": {"dataset": "y"}, "captions": captions}))

    assert problems() == {}
    assert "kohya would read only the first 225" in problems(max_token_length=255)["captions.max_token_length"]
    assert "use 225" in problems(max_token_length=227)["captions.max_token_length"]
    assert "outside 75..525" in problems(max_token_length=600)["captions.max_token_length"]
    assert problems(max_token_length=150) == {}
    assert "add up to 1" in problems(mix_tags=0.7, mix_caption=0.2)["captions.mix_tags"]
    assert problems(mix_tags=0.7, mix_caption=0.2, mix_both=0.1) == {}
    (tmp_path / "cycle.csv").write_text("a,b\nb,c\nc,a\n", encoding="utf-8")
    assert "a -> b -> c -> a" in problems(implications_csv=str(tmp_path / "cycle.csv"),
                                          implication_dropout=0.3)["captions.implications_csv"]
    assert "needs an implications CSV" in problems(implication_dropout=0.3)["captions.implications_csv"]
    assert "SD 1.5" in problems(clip_skip=2)["captions.clip_skip"]
    jitter = validate(from_dict(TrainConfig, {"model": {"base_model": "x"}, "data": {
        "dataset": "y", "cache_latents": "memory", "hue_jitter": 0.04}}))
    assert "fixed colours" in jitter["data.cache_latents"]


def test_format_1_configs_move_caption_options_to_the_captions_section(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text('format_version = 1\n[data]\ndataset = "d"\nshuffle_caption = true\nkeep_tokens = 2\n'
                    'tag_dropout = 0.1\n', encoding="utf-8")
    cfg = load_config(TrainConfig, path)
    assert cfg.captions.shuffle_caption and cfg.captions.keep_tokens == 2 and cfg.captions.tag_dropout == 0.1
    assert cfg.data.dataset == "d"
    with pytest.raises(ConfigError, match="data.shuffle_caption: unknown key"):
        from_dict(TrainConfig, json.loads('{"data": {"shuffle_caption": true}}'))


def test_cli_check_reads_caption_records_and_implications_before_training(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from helpers.config import save_config
    from helpers.training.__main__ import main

    (tmp_path / "ds").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "ds" / "a.png")
    (tmp_path / "ds" / "a.txt").write_text("cat, sitting", encoding="utf-8")
    (tmp_path / "ds" / "a.captions.json").write_text('{"tags": "not a list"}', encoding="utf-8")
    cfg = from_dict(TrainConfig, {"model": {"base_model": "x"}, "data": {"dataset": str(tmp_path / "ds")},
                                  "captions": {"mix_tags": 0.5, "mix_caption": 0.5}})
    save_config(cfg, tmp_path / "run" / "config.toml")
    assert main([str(tmp_path / "run" / "config.toml"), "--check"]) == 2
    assert "a.captions.json: field 'tags' should be list" in capsys.readouterr().err
    cfg.captions.mix_tags, cfg.captions.mix_caption = 1.0, 0.0  # the .txt only: records are not read
    save_config(cfg, tmp_path / "run" / "config.toml")
    assert main([str(tmp_path / "run" / "config.toml"), "--check"]) == 0
