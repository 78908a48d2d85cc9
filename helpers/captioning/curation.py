"""Curation across a dataset: trigger words, remove / replace / dedupe / sort tags, the tag frequency table.

Functions here take caption records (``sidecar.CaptionRecord``) and return new ones; nothing is written until
``sidecar.apply_edit`` saves them (backed up, undoable), so every bulk change can be previewed first.

Trigger words follow the user's guide: a rare token either at the front ("kncr, a woman ...") or next to what
it names ("a woman wearing kncr outfit": inserted before a class word), or replacing the class word.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from helpers.captioning.sidecar import CaptionRecord, contains_phrase
from helpers.captioning.tags import dedupe_tags, remove_tags, replace_tags, sort_tags, split_tags, tag_key
from helpers.config import option

TriggerPosition = Literal["front", "before_class", "replace_class"]


@dataclass
class CurationConfig:
    """Bulk edits applied to every image's caption record, in this order: replace, remove, dedupe, sort, trigger."""

    format_version: ClassVar[int] = 1

    trigger: str = option("", help="trigger word(s) to add to every image, e.g. 'ewpp' (empty: none)")
    trigger_position: TriggerPosition = option(
        "front", help="front: at the start; before_class: just before the class word ('kncr outfit', as the "
        "guide places its rare token); replace_class: instead of the class word")
    class_word: str = option("", help="the word the trigger names, e.g. 'outfit' or 'woman' (for before/replace; "
                             "images without it get the trigger at the front)")
    trigger_in: Literal["both", "tags", "captions"] = option("both", help="add the trigger to the tags, the "
                                                             "natural-language captions, or both")
    replace: list[str] = option([], help="tag replacements, one 'old -> new' per entry (empty new removes)")
    remove: list[str] = option([], help="tags to remove (a * is a wildcard: '*background')")
    dedupe: bool = option(True, help="drop repeated tags (long_hair = long hair = Long Hair)")
    sort: Literal["none", "alphabetical", "frequency"] = option(
        "none", help="reorder tags after the kept leading ones (frequency: the dataset's most common first)")


def parse_replacements(lines: list[str]) -> dict[str, str]:
    """``["old -> new", "gone ->"]`` -> ``{"old": "new", "gone": ""}``; ``ValueError`` names a bad entry."""
    mapping = {}
    for line in lines:
        if not line.strip():
            continue
        if "->" not in line:
            raise ValueError(f"replacement {line!r}: write it as 'old tag -> new tag' (empty new tag removes)")
        old, new = (part.strip() for part in line.split("->", 1))
        if not old:
            raise ValueError(f"replacement {line!r}: the old tag is empty")
        mapping[old] = new
    return mapping


def insert_trigger_in_caption(text: str, trigger: str, position: TriggerPosition = "front",
                              class_word: str = "") -> str:
    """``text`` with ``trigger`` at the front, before the first ``class_word``, or replacing it.

    Already present: unchanged. No class word found: the trigger goes to the front.
    """
    if not trigger or contains_phrase(text, trigger):
        return text
    if position != "front" and class_word:
        pattern = re.compile(rf"(?<!\w){re.escape(class_word)}(?!\w)", flags=re.IGNORECASE)
        match = pattern.search(text)
        if match:
            insert = trigger if position == "replace_class" else f"{trigger} {match.group(0)}"
            return text[:match.start()] + insert + text[match.end():]
    return f"{trigger}, {text}" if text else trigger


def insert_trigger_in_tags(tags: list[str], keep: int, trigger: str, position: TriggerPosition = "front",
                           class_word: str = "") -> tuple[list[str], int]:
    """Tags with ``trigger`` added (and the new count of kept leading tags: a front trigger is kept)."""
    if not trigger or any(tag_key(t) == tag_key(trigger) for t in tags):
        return list(tags), keep
    keys = [tag_key(t) for t in tags]
    if position != "front" and class_word and tag_key(class_word) in keys:
        i = keys.index(tag_key(class_word))
        out = list(tags)
        if position == "replace_class":
            out[i] = trigger
        else:
            out.insert(i, trigger)
            keep += 1 if i < keep else 0
        return out, keep
    return [trigger] + list(tags), keep + 1


def tag_frequencies(records: dict[Path, CaptionRecord]) -> list[tuple[str, int]]:
    """(tag, number of images having it), most common first; spellings of one tag count together."""
    counts: Counter[str] = Counter()
    shown: dict[str, str] = {}
    for record in records.values():
        for tag in dedupe_tags(record.tags):
            key = tag_key(tag)
            counts[key] += 1
            shown.setdefault(key, tag)
    return sorted(((shown[k], n) for k, n in counts.items()), key=lambda item: (-item[1], tag_key(item[0])))


def curate_records(records: dict[Path, CaptionRecord], cfg: CurationConfig) -> dict[Path, CaptionRecord]:
    """New records with ``cfg``'s edits applied (the input is not modified); unchanged records are left out."""
    mapping = parse_replacements(cfg.replace)
    counts = {tag_key(t): n for t, n in tag_frequencies(records)} if cfg.sort == "frequency" else None
    out = {}
    for image, old in records.items():
        record = old.copy()
        tags = record.tags
        if mapping:
            tags = replace_tags(tags, mapping)
        if cfg.remove:
            tags = remove_tags(tags, cfg.remove)
        if cfg.dedupe:
            tags = dedupe_tags(tags)
        keep = min(record.keep, len(tags))
        if cfg.sort != "none":
            tags = sort_tags(tags, cfg.sort, counts, keep_first=keep)
        if cfg.trigger and cfg.trigger_in in ("both", "tags") and tags:
            tags, keep = insert_trigger_in_tags(tags, keep, cfg.trigger.strip(), cfg.trigger_position,
                                                cfg.class_word.strip())
        if cfg.trigger and cfg.trigger_in in ("both", "captions"):
            for source, text in record.captions.items():
                record.captions[source] = insert_trigger_in_caption(text, cfg.trigger.strip(),
                                                                    cfg.trigger_position, cfg.class_word.strip())
            if not tags and not record.captions:
                tags, keep = [cfg.trigger.strip()], 1  # an image with nothing yet still gets its trigger
        record.tags, record.keep = tags, keep
        if record.tags != old.tags or record.keep != old.keep or record.captions != old.captions:
            out[image] = record
    return out


def remove_tags_everywhere(records: dict[Path, CaptionRecord], unwanted: list[str]) -> dict[Path, CaptionRecord]:
    """Records (changed ones only) without ``unwanted`` tags: the frequency table's bulk "remove"."""
    return curate_records(records, CurationConfig(remove=unwanted, dedupe=False))


def replace_tags_everywhere(records: dict[Path, CaptionRecord], old: list[str], new: str) -> dict[Path, CaptionRecord]:
    """Records (changed ones only) with every tag in ``old`` replaced by ``new`` (comma-separated allowed)."""
    return curate_records(records, CurationConfig(replace=[f"{o} -> {new}" for o in old], dedupe=True))


def frequency_chart(frequencies: list[tuple[str, int]], top: int = 30, title: str = "tag frequency"):
    """A bar chart (PIL image) of the ``top`` most common tags."""
    from helpers.ui.charts import bar_chart

    head = frequencies[:top]
    return bar_chart([t for t, _ in head], [n for _, n in head], title=title, xlabel="tag", ylabel="images")


def split_tag_text(text: str) -> list[str]:
    """Tags typed into a text box (comma-separated) as a list."""
    return split_tags(text)
