"""Booru captions: Danbooru post metadata (gallery-dl ``--write-metadata`` JSON) -> Kohaku XL-style tag captions.

The order is the Kohaku XL Epsilon card's prompt order::

    <1girl/1boy/...>, <character>, <series>, <artists>, <general tags>,
    <quality tags>, <year tags>, <meta tags>, <rating tags>

- quality (card, "Quality Tags"): the post's ``fav_count`` percentile *within its rating*; above the 90th, 75th,
  60th, 45th, 30th and 10th percentile -> masterpiece, best, great, good, normal, low quality; else worst
  quality. Percentiles come from danbooru2023 (the table HakuBooru ships, ``hakubooru/metainfo.py``,
  Apache-2.0, KohakuBlueleaf) or from the dataset's own posts;
- or, when an aesthetic score is given, the XL style card's mapping (> 0.75 masterpiece, > 0.6 high quality,
  > 0.5 normal quality, > 0.3 low quality, else worst quality);
- year (card, "Date tags", upload year): 2005-2010 old, 2011-2014 early, 2015-2017 mid, 2018-2020 recent,
  2021-2024 newest. Later uploads are also "newest" (the card's last period ends where its data did);
  a missing or unreadable date gives no year tag;
- rating: general -> safe, sensitive -> sensitive, questionable -> nsfw, explicit -> nsfw, explicit
  (Danbooru's API letters g/s/q/e are accepted);
- meta tags that are about the post rather than the picture are dropped (HakuBooru's keyword list:
  "(medium)", commentary, bad, translat, request, mismatch, revision, audio, video), and artist tags naming a
  banned artist;
- underscores -> spaces except in short emoticon tags; no bracket escaping (these are training captions).

The leading special/character/series/artist tags are recorded as "kept" (``keep``), so rendering with
``keep_separator`` writes ``|||`` after them as HakuBooru does for kohya's ``keep_tokens_separator``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from helpers.captioning import sidecar
from helpers.captioning.tags import RATING_TAGS, UnderscoreRule, dedupe_tags, format_tag, merge_tags
from helpers.config import option
from helpers.dataset.files import list_images

SPECIAL_TAGS = ("1girl", "2girls", "3girls", "4girls", "5girls", "6+girls", "multiple_girls",
                "1boy", "2boys", "3boys", "4boys", "5boys", "6+boys", "multiple_boys", "male_focus",
                "1other", "2others", "3others", "4others", "5others", "6+others", "multiple_others")
META_DROP_KEYWORDS = ("(medium)", "commentary", "bad", "translat", "request", "mismatch", "revision", "audio",
                      "video")
RATING_LETTERS = {"g": "general", "s": "sensitive", "q": "questionable", "e": "explicit"}
QUALITY_LEVELS = ((90, "masterpiece"), (75, "best quality"), (60, "great quality"), (45, "good quality"),
                  (30, "normal quality"), (10, "low quality"))
WORST = "worst quality"
# fav_count percentiles per rating on danbooru2023 (HakuBooru hakubooru/metainfo.py, Apache-2.0)
DANBOORU2023_FAV_PERCENTILES = {
    "general": {10: 1, 30: 4, 45: 7, 60: 10, 75: 16, 90: 27},
    "sensitive": {10: 2, 30: 8, 45: 13, 60: 19, 75: 30, 90: 56},
    "questionable": {10: 8, 30: 21, 45: 33, 60: 49, 75: 75, 90: 132},
    "explicit": {10: 9, 30: 27, 45: 45, 60: 69, 75: 106, 90: 190},
}
AESTHETIC_LEVELS = ((0.75, "masterpiece"), (0.6, "high quality"), (0.5, "normal quality"), (0.3, "low quality"))
YEAR_PERIODS = ((2010, "old"), (2014, "early"), (2017, "mid"), (2020, "recent"))
MIN_POSTS_FOR_DATASET_PERCENTILES = 20


@dataclass
class BooruConfig:
    """How booru metadata becomes captions (Kohaku XL rules by default)."""

    format_version: ClassVar[int] = 1

    quality: Literal["fav_count", "aesthetic", "none"] = option(
        "fav_count", help="quality tags from the favourite count percentile within the rating (Kohaku XL), from "
        "an aesthetic score in the metadata (XL style card), or none")
    percentiles: Literal["danbooru2023", "dataset"] = option(
        "danbooru2023", help="fav_count percentiles of all Danbooru (HakuBooru's table) or of this dataset's "
        "posts (needs 20+ posts per rating, else Danbooru's are used)")
    aesthetic_key: str = option("aesthetic_score", help="metadata field holding a 0-1 aesthetic score",
                                group="advanced")
    year_tags: bool = option(True, help="add old / early / mid / recent / newest from the upload year")
    rating_tags: bool = option(True, help="add safe / sensitive / nsfw / explicit")
    meta_tags: bool = option(True, help="keep meta tags that describe the picture (highres, ...)")
    underscores: UnderscoreRule = option("length", help="underscores to spaces except in tags of 3 characters "
                                         "or fewer ('length', Kohaku XL) or emoticons ('both')", group="advanced")


@dataclass
class BooruCaption:
    tags: list[str]
    keep: int
    rating: str | None
    notes: list[str] = field(default_factory=list)  # fields that were missing, for the report


def post_tags(post: dict[str, Any], kind: str) -> list[str]:
    """One tag category of a post: gallery-dl's ``tags_<kind>`` list, else the API's ``tag_string_<kind>``."""
    value = post.get(f"tags_{kind}")
    if value is None:
        value = post.get(f"tag_string_{kind}")
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value if str(v).strip()]


def post_rating(post: dict[str, Any]) -> str | None:
    value = str(post.get("rating") or "").strip().lower()
    return RATING_LETTERS.get(value, value if value in RATING_TAGS else None)


def post_year(post: dict[str, Any]) -> int | None:
    """Upload year from ``created_at`` (API, ISO 8601) or ``date`` (gallery-dl, "YYYY-MM-DD HH:MM:SS")."""
    for key in ("created_at", "date"):
        value = post.get(key)
        if not value:
            continue
        try:
            return _dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).year
        except ValueError:
            try:
                return int(str(value)[:4])
            except ValueError:
                continue
    return None


def year_tag(year: int) -> str:
    """Kohaku XL date tag for an upload year (2021 and later: newest)."""
    for last, tag in YEAR_PERIODS:
        if year <= last:
            return tag
    return "newest"


def fav_quality_tag(fav_count: float, percentiles: dict[int, float]) -> str:
    """Quality tag from ``fav_count`` and that rating's percentile table {percent: fav_count} (strict ``>``)."""
    for pct, tag in QUALITY_LEVELS:
        if fav_count > percentiles[pct]:
            return tag
    return WORST


def aesthetic_quality_tag(score: float) -> str:
    """The XL style card's aesthetic score (0-1) -> quality tag mapping."""
    for lower, tag in AESTHETIC_LEVELS:
        if score > lower:
            return tag
    return WORST


def percentile(values: list[float], pct: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of ``values``."""
    ranked = sorted(values)
    pos = (len(ranked) - 1) * pct / 100
    lo = int(pos)
    hi = min(lo + 1, len(ranked) - 1)
    return ranked[lo] + (ranked[hi] - ranked[lo]) * (pos - lo)


def dataset_percentiles(posts: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """fav_count percentile tables per rating from ``posts``, for ratings with enough posts (others: Danbooru's)."""
    by_rating: dict[str, list[float]] = {}
    for post in posts:
        rating, fav = post_rating(post), post.get("fav_count")
        if rating and isinstance(fav, (int, float)):
            by_rating.setdefault(rating, []).append(float(fav))
    table = {r: dict(t) for r, t in DANBOORU2023_FAV_PERCENTILES.items()}
    for rating, favs in by_rating.items():
        if len(favs) >= MIN_POSTS_FOR_DATASET_PERCENTILES:
            table[rating] = {pct: percentile(favs, pct) for pct, _ in QUALITY_LEVELS}
    return table


def booru_caption(post: dict[str, Any], cfg: BooruConfig | None = None,
                  percentiles: dict[str, dict[int, float]] | None = None) -> BooruCaption:
    """The Kohaku-ordered caption tags of one Danbooru post (see the module docstring for every rule)."""
    cfg = cfg or BooruConfig()
    percentiles = percentiles or DANBOORU2023_FAV_PERCENTILES
    notes: list[str] = []
    general = post_tags(post, "general")
    special = [t for t in SPECIAL_TAGS if t in general]
    general = [t for t in general if t not in SPECIAL_TAGS]
    character, series = post_tags(post, "character"), post_tags(post, "copyright")
    artists = [t for t in post_tags(post, "artist") if "banned" not in t]
    meta = [t for t in post_tags(post, "meta") if not any(k in t for k in META_DROP_KEYWORDS)]
    if not (special or general or character):
        notes.append("no tags")
    rating = post_rating(post)
    if rating is None:
        notes.append("no rating")
    quality: list[str] = []
    if cfg.quality == "fav_count":
        fav = post.get("fav_count")
        if rating is None or not isinstance(fav, (int, float)) or isinstance(fav, bool):
            notes.append("no fav_count" if rating else "no quality (needs the rating)")
        else:
            quality = [fav_quality_tag(fav, percentiles[rating])]
    elif cfg.quality == "aesthetic":
        score = post.get(cfg.aesthetic_key)
        if isinstance(score, (int, float)) and not isinstance(score, bool):
            quality = [aesthetic_quality_tag(float(score))]
        else:
            notes.append(f"no {cfg.aesthetic_key}")
    year = post_year(post) if cfg.year_tags else None
    if cfg.year_tags and year is None:
        notes.append("no upload date")
    head = [format_tag(t, cfg.underscores) for t in special + character + series + artists]
    tail = ([format_tag(t, cfg.underscores) for t in general] + quality + ([year_tag(year)] if year else [])
            + ([format_tag(t, cfg.underscores) for t in meta] if cfg.meta_tags else [])
            + (RATING_TAGS[rating] if cfg.rating_tags and rating else []))
    head = dedupe_tags(head)
    tags = dedupe_tags(head + tail)
    return BooruCaption(tags, len(head), rating, notes)


# ------------------------------------------------------------------------------------------------ files on disk
def metadata_path(image: str | os.PathLike) -> Path | None:
    """gallery-dl's metadata file for ``image``: ``name.ext.json`` (its default), else ``name.json``."""
    image = Path(image)
    for candidate in (image.with_name(image.name + ".json"), image.with_name(image.stem + ".json")):
        if candidate.is_file():
            return candidate
    return None


def read_post(path: str | os.PathLike) -> dict[str, Any]:
    """One post's metadata; ``ValueError`` naming the file when it is not a JSON object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON metadata ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected one post (a JSON object), got {type(data).__name__}")
    return data


@dataclass
class BooruReport:
    captioned: int = 0
    no_metadata: list[Path] = field(default_factory=list)
    problems: dict[Path, str] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)  # note -> how many posts lacked it
    edit: object = None

    def summary(self) -> dict[str, object]:
        out = {"captioned": self.captioned, "no_metadata": len(self.no_metadata), "problems": len(self.problems),
               "missing_fields": self.missing}
        if self.edit is not None:
            out["undo"] = [str(p) for p in self.edit.backup_dirs]
        return out


def caption_dataset_from_metadata(folder: str | os.PathLike, cfg: BooruConfig | None = None, render=None,
                                  mode: Literal["overwrite", "append", "prepend"] = "overwrite") -> BooruReport:
    """Booru captions for every image under ``folder`` that has gallery-dl metadata beside it."""
    cfg = cfg or BooruConfig()
    report = BooruReport()
    images = list_images(folder)
    records, report.problems = sidecar.load_records(images)
    posts: dict[Path, dict[str, Any]] = {}
    for image in records:
        path = metadata_path(image)
        if path is None:
            report.no_metadata.append(image)
            continue
        try:
            posts[image] = read_post(path)
        except ValueError as exc:
            report.problems[image] = str(exc)
    table = dataset_percentiles(list(posts.values())) if cfg.percentiles == "dataset" else None
    changed = {}
    for image, post in posts.items():
        caption = booru_caption(post, cfg, table)
        for note in caption.notes:
            report.missing[note] = report.missing.get(note, 0) + 1
        record = records[image].copy()
        record.tags = merge_tags(record.tags, caption.tags, mode)
        record.keep = caption.keep if mode == "overwrite" else record.keep
        record.rating = caption.rating or record.rating
        record.sources["tags"] = "danbooru metadata (Kohaku XL rules)"
        changed[image] = record
    report.captioned = len(changed)
    if changed:
        report.edit = sidecar.apply_edit(changed, render)
        report.problems.update(report.edit.problems)
    return report
