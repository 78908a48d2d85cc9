"""Booru captions by the Kohaku XL rules, from hand-made gallery-dl Danbooru metadata (every rule, missing fields)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from helpers.captioning import booru as B
from helpers.captioning.sidecar import RenderConfig, load_record
from helpers.dataset.caption_files import caption_path, read_caption


def post(**overrides):
    base = {
        "id": 123, "rating": "s", "fav_count": 40, "score": 30, "created_at": "2016-05-04T10:00:00.000-04:00",
        "tags_general": ["1girl", "long_hair", "smile", "^_^", "multiple_boys", "2boys"],
        "tags_character": ["hatsune_miku"], "tags_copyright": ["vocaloid"],
        "tags_artist": ["ask_(askzy)", "banned_artist"],
        "tags_meta": ["highres", "commentary_request", "bad_id", "absurdres", "translated", "video"],
    }
    base.update(overrides)
    return base


def test_full_post_follows_the_kohaku_order():
    cap = B.booru_caption(post())
    assert cap.tags == [
        "1girl", "2boys", "multiple boys",          # special tags first, in the card's 1girl/1boy/... order
        "hatsune miku", "vocaloid", "ask (askzy)",  # character, series, artists (banned artist dropped)
        "long hair", "smile", "^_^",                # general, short emoticon keeps its underscore
        "best quality",                             # sensitive: p75=30 < 40 <= p90=56
        "mid",                                      # 2016
        "highres", "absurdres",                     # meta kept only when about the picture
        "sensitive",                                # rating last
    ]
    assert cap.keep == 6 and cap.rating == "sensitive" and cap.notes == []


@pytest.mark.parametrize("rating, fav, expected", [
    ("g", 28, "masterpiece"), ("g", 27, "best quality"),   # strict > against general p90=27
    ("g", 17, "best quality"), ("g", 11, "great quality"), ("g", 8, "good quality"), ("g", 5, "normal quality"),
    ("g", 2, "low quality"), ("g", 1, "worst quality"), ("g", 0, "worst quality"),
    ("e", 191, "masterpiece"), ("e", 100, "great quality"),  # the same count means less under explicit
    ("q", 50, "great quality"), ("explicit", 10, "low quality"),
])
def test_quality_from_fav_count_percentile_within_rating(rating, fav, expected):
    tags = B.booru_caption(post(rating=rating, fav_count=fav)).tags
    assert expected in tags
    assert sum(t.endswith("quality") or t == "masterpiece" for t in tags) == 1


@pytest.mark.parametrize("letter, tags", [("g", ["safe"]), ("s", ["sensitive"]), ("q", ["nsfw"]),
                                          ("e", ["nsfw", "explicit"]), ("general", ["safe"])])
def test_rating_tags(letter, tags):
    out = B.booru_caption(post(rating=letter)).tags
    assert out[-len(tags):] == tags


@pytest.mark.parametrize("date, tag", [("2005-01-01T00:00:00Z", "old"), ("2010-12-31T23:59:59+09:00", "old"),
                                      ("2011-01-01T00:00:00Z", "early"), ("2014-06-01", "early"),
                                      ("2015-01-01", "mid"), ("2017-12-31", "mid"), ("2018-01-01", "recent"),
                                      ("2020-07-07", "recent"), ("2021-01-01", "newest"), ("2024-02-28", "newest"),
                                      ("2026-01-01T00:00:00Z", "newest")])
def test_year_tags(date, tag):
    assert tag in B.booru_caption(post(created_at=date)).tags


def test_gallery_dl_date_field_and_api_tag_strings():
    p = post()
    del p["created_at"]
    p["date"] = "2019-03-01 12:00:00"  # gallery-dl's own field
    assert "recent" in B.booru_caption(p).tags
    api = {"rating": "g", "fav_count": 3, "created_at": "2022-01-01T00:00:00Z",
           "tag_string_general": "1boy solo", "tag_string_character": "", "tag_string_copyright": "original",
           "tag_string_artist": "someone", "tag_string_meta": "highres"}
    assert B.booru_caption(api).tags == ["1boy", "original", "someone", "solo", "low quality", "newest",
                                         "highres", "safe"]


def test_missing_fields_leave_tags_out_and_are_reported():
    bare = {"tags_general": ["1other", "solo"]}
    cap = B.booru_caption(bare)
    assert cap.tags == ["1other", "solo"] and cap.keep == 1
    assert set(cap.notes) == {"no rating", "no quality (needs the rating)", "no upload date"}
    cap = B.booru_caption(post(fav_count=None, created_at="not a date"))
    assert "no fav_count" in cap.notes and not any(t.endswith("quality") for t in cap.tags)
    assert "no upload date" in cap.notes
    assert B.booru_caption({}).notes[0] == "no tags"


def test_aesthetic_score_mapping_of_the_xl_style_card():
    cfg = B.BooruConfig(quality="aesthetic")
    for score, tag in [(0.76, "masterpiece"), (0.75, "high quality"), (0.61, "high quality"),
                       (0.6, "normal quality"), (0.51, "normal quality"), (0.5, "low quality"),
                       (0.31, "low quality"), (0.3, "worst quality"), (0.0, "worst quality")]:
        assert B.aesthetic_quality_tag(score) == tag
        assert tag in B.booru_caption(post(aesthetic_score=score), cfg).tags
    assert "no aesthetic_score" in B.booru_caption(post(), cfg).notes


def test_options_and_dataset_percentiles():
    cfg = B.BooruConfig(quality="none", year_tags=False, rating_tags=False, meta_tags=False, underscores="keep")
    assert B.booru_caption(post(), cfg).tags == ["1girl", "2boys", "multiple_boys", "hatsune_miku", "vocaloid",
                                                 "ask_(askzy)", "long_hair", "smile", "^_^"]
    posts = [post(rating="g", fav_count=i) for i in range(100)]
    table = B.dataset_percentiles(posts)
    assert table["general"][90] == pytest.approx(89.1) and table["explicit"] == B.DANBOORU2023_FAV_PERCENTILES["explicit"]
    assert "masterpiece" in B.booru_caption(post(rating="g", fav_count=95), percentiles=table).tags
    assert "low quality" in B.booru_caption(post(rating="g", fav_count=12), percentiles=table).tags


def test_dataset_from_gallery_dl_sidecar_files(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    for name in ("a.jpg", "b.png", "c.png", "d.png"):
        Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / name)
    (folder / "a.jpg.json").write_text(json.dumps(post()), encoding="utf-8")       # gallery-dl default name
    (folder / "b.json").write_text(json.dumps(post(rating="e")), encoding="utf-8")  # stem name
    (folder / "c.png.json").write_text("{broken", encoding="utf-8")
    report = B.caption_dataset_from_metadata(folder, render=RenderConfig(format="tags", keep_separator=True))
    assert report.captioned == 2 and report.no_metadata == [folder / "d.png"]
    assert "c.png.json: not readable JSON" in report.problems[folder / "c.png"]
    assert read_caption(folder / "a.jpg").startswith("1girl, 2boys, multiple boys, hatsune miku, vocaloid, "
                                                    "ask (askzy) ||| long hair, smile")
    assert read_caption(folder / "b.png").endswith("nsfw, explicit")
    assert load_record(folder / "b.png").rating == "explicit"
    assert not caption_path(folder / "d.png").exists()
