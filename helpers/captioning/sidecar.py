"""Per-image caption records (tags and natural-language captions kept apart) and the ``.txt`` rendered from them.

Each image ``foo.png`` may have a sidecar ``foo.captions.json`` next to it (format version 1)::

    {
      "format_version": 1,
      "tags": ["1girl", "solo", "long hair"],      # ordered caption tags, as text (spaces, not underscores)
      "keep": 1,                                   # leading tags never shuffled (kohya keep_tokens / "|||")
      "rating": "general",                         # Danbooru rating word when known (tagger argmax, metadata)
      "captions": {"original": "a woman ...",      # natural-language captions by source, oldest first
                   "florence-2-large": "The image shows ..."},
      "sources": {"tags": "SmilingWolf/wd-eva02-large-tagger-v3"},   # which model/tool made each kind
      "scores": {"1girl": 0.998},                  # tagger probabilities of the tags it wrote
      "txt_sha256": "..."                          # hash of the .txt last rendered (detects hand edits)
    }

The ``.txt`` beside the image, which kohya, OneTrainer and tunebook's trainer read by default, is *rendered*
from the record in a chosen format ("tags", "caption", "caption, tags", "tags, caption"), so a later trainer
can mix the kinds per step while every tool still finds a plain caption. An image with no sidecar gets a
record from its ``.txt`` (tag-like text becomes tags, prose becomes the "original" caption), so nothing the
user wrote is lost. A ``.txt`` edited by hand since it was rendered is never overwritten without being asked.

Every write goes through ``helpers.captions.write_captions`` (atomic, backed up, undoable): sidecars first,
then the ``.txt`` files, each a change set; ``undo_edit`` reverses both.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from helpers.captioning.tags import KEEP_SEPARATOR, join_tags, split_tags
from helpers.changes import ChangeSet, UndoResult, sha256_text, undo_changes
from helpers.config import option
from helpers.dataset.caption_files import (
    CaptionError,
    ChangeRow,
    caption_path,
    preview_changes,
    read_caption,
    write_captions,
)

SIDECAR_EXT = ".captions.json"
SIDECAR_VERSION = 1
ORIGINAL = "original"  # caption source name for text found in a .txt written before tunebook's records
RenderFormat = Literal["tags", "caption", "caption, tags", "tags, caption"]


@dataclass
class CaptionRecord:
    """Everything known about one image's captions (see the module docstring for the file format)."""

    tags: list[str] = field(default_factory=list)
    keep: int = 0
    rating: str | None = None
    captions: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    txt_sha256: str | None = None

    def copy(self) -> CaptionRecord:
        return CaptionRecord(list(self.tags), self.keep, self.rating, dict(self.captions), dict(self.sources),
                             dict(self.scores), self.txt_sha256)

    def set_caption(self, source: str, text: str) -> None:
        """Store ``text`` as the caption from ``source``; it becomes the newest (last) caption."""
        self.captions.pop(source, None)
        self.captions[source] = text.strip()

    def caption(self, source: str = "latest") -> str | None:
        """The caption from ``source`` ("latest" = the newest one), or None."""
        if source == "latest":
            return next(reversed(self.captions.values()), None) if self.captions else None
        return self.captions.get(source)

    def to_json(self) -> str:
        data = {"format_version": SIDECAR_VERSION, "tags": self.tags, "keep": self.keep, "rating": self.rating,
                "captions": self.captions, "sources": self.sources,
                "scores": {k: round(v, 4) for k, v in self.scores.items()}, "txt_sha256": self.txt_sha256}
        return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def sidecar_path(image: str | os.PathLike) -> Path:
    return caption_path(image, SIDECAR_EXT)


def parse_record(text: str, where: str) -> CaptionRecord:
    """A record from sidecar JSON; ``CaptionError`` naming ``where`` and the field when it does not fit."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaptionError(f"{where}: not valid JSON ({exc}); fix it or delete it to rebuild from the .txt") from None
    if not isinstance(data, dict):
        raise CaptionError(f"{where}: expected a JSON object")
    version = data.get("format_version", SIDECAR_VERSION)
    if not isinstance(version, int) or version > SIDECAR_VERSION:
        raise CaptionError(f"{where}: format_version {version!r} is newer than this tunebook reads "
                           f"({SIDECAR_VERSION}); update tunebook")

    def get(key: str, kind: type, default):
        value = data.get(key, default)
        if value is not None and not isinstance(value, kind):
            raise CaptionError(f"{where}: field '{key}' should be {kind.__name__}, got {type(value).__name__}")
        return default if value is None else value

    tags, captions = get("tags", list, []), get("captions", dict, {})
    if not all(isinstance(t, str) for t in tags) or not all(isinstance(v, str) for v in captions.values()):
        raise CaptionError(f"{where}: 'tags' must be a list of text and 'captions' a table of text")
    return CaptionRecord(tags=list(tags), keep=int(get("keep", int, 0)), rating=data.get("rating"),
                         captions=dict(captions), sources=dict(get("sources", dict, {})),
                         scores={k: float(v) for k, v in get("scores", dict, {}).items()},
                         txt_sha256=data.get("txt_sha256"))


def looks_like_tags(text: str) -> bool:
    """Whether caption text is a tag list ("1girl, solo, long hair") rather than prose."""
    parts = split_tags(text)
    if len(parts) < 2 or text.rstrip().endswith("."):
        return False
    short = sum(1 for p in parts if len(p.split()) <= 3)
    return short >= 0.7 * len(parts)


def record_from_text(text: str) -> CaptionRecord:
    """A record for an image that only has a ``.txt``: tag-like text becomes tags, prose the original caption."""
    record = CaptionRecord()
    if not text:
        return record
    if looks_like_tags(text):
        head, sep, _ = text.partition(KEEP_SEPARATOR)
        record.tags = split_tags(text)
        record.keep = len(split_tags(head)) if sep else 0
    else:
        record.set_caption(ORIGINAL, text)
    return record


def load_record(image: str | os.PathLike) -> CaptionRecord:
    """The image's record: its sidecar, else one built from its ``.txt``, else an empty one.

    Raises ``CaptionError`` (naming the file) for a damaged sidecar or a ``.txt`` that is not UTF-8.
    """
    text = read_caption(image, SIDECAR_EXT)
    if text is not None:
        return parse_record(text, str(sidecar_path(image)))
    return record_from_text(read_caption(image) or "")


def load_records(images: list[Path]) -> tuple[dict[Path, CaptionRecord], dict[Path, str]]:
    """Records for ``images``; images whose files cannot be read go to the second dict with the reason."""
    records, problems = {}, {}
    for image in images:
        try:
            records[image] = load_record(image)
        except CaptionError as exc:
            problems[image] = str(exc)
    return records, problems


# ----------------------------------------------------------------------------------------------------- rendering
@dataclass
class RenderConfig:
    """How the ``.txt`` beside each image is written from its record."""

    format_version: ClassVar[int] = 1

    format: RenderFormat = option("caption, tags", help="what the .txt holds: tags, the natural-language "
                                  "caption, or both in either order (a missing kind is left out)")
    caption_source: str = option("latest", help="which caption to use: 'latest' (the newest), 'original' (the "
                                 "text the .txt had before), or a captioner name such as florence-2-large")
    separator: str = option(", ", help="between tags, and between the caption and the tags", group="advanced")
    keep_separator: bool = option(False, help="write ' ||| ' after the record's kept leading tags (kohya "
                                  "keep_tokens_separator), so shuffling never moves them", group="advanced")
    overwrite_edited: bool = option(False, help="also overwrite .txt files edited by hand since tunebook last "
                                    "wrote them (they are backed up either way)", group="advanced")


def render_caption(record: CaptionRecord, fmt: RenderFormat = "caption, tags", caption_source: str = "latest",
                   separator: str = ", ", keep_separator: bool = False) -> str:
    """The ``.txt`` text for ``record``; when the chosen kinds are missing, whatever exists is used.

    In the combined formats a tag the caption already says word for word (a trigger word added to both) is
    written once, in the caption.
    """
    caption = record.caption(caption_source) or ""
    tag_list, keep = list(record.tags), record.keep
    if caption and fmt in ("caption, tags", "tags, caption"):
        said = [contains_phrase(caption, t) for t in tag_list]
        keep -= sum(said[:keep])
        tag_list = [t for t, s in zip(tag_list, said, strict=True) if not s]
    if keep_separator and 0 < keep < len(tag_list):
        tags = (join_tags(tag_list[:keep], separator) + f" {KEEP_SEPARATOR} "
                + join_tags(tag_list[keep:], separator))
    else:
        tags = join_tags(tag_list, separator)
    parts = {"tags": [tags], "caption": [caption], "caption, tags": [caption, tags],
             "tags, caption": [tags, caption]}.get(fmt)
    if parts is None:
        raise ValueError(f"unknown caption format {fmt!r}: use one of tags, caption, 'caption, tags', "
                         "'tags, caption'")
    text = separator.join(p for p in parts if p)
    return text or separator.join(p for p in (caption, tags) if p)


def contains_phrase(text: str, phrase: str) -> bool:
    """Whether ``phrase`` occurs in ``text`` as whole words (case-insensitive)."""
    phrase = phrase.strip()
    return bool(phrase) and re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.IGNORECASE) is not None


# ---------------------------------------------------------------------------------------------- edits on disk
@dataclass
class EditResult:
    """What an edit wrote: the sidecar and ``.txt`` change sets, and images left alone with the reason."""

    sidecars: ChangeSet = field(default_factory=ChangeSet)
    texts: ChangeSet = field(default_factory=ChangeSet)
    problems: dict[Path, str] = field(default_factory=dict)

    @property
    def backup_dirs(self) -> list[Path]:
        return [cs.backup_dir for cs in (self.sidecars, self.texts) if cs.backup_dir is not None]

    def summary(self) -> dict[str, object]:
        return {"sidecars": self.sidecars.summary(), "txt": self.texts.summary(), "problems": len(self.problems),
                "undo": [str(p) for p in self.backup_dirs]}


def plan_texts(records: dict[Path, CaptionRecord], render: RenderConfig) -> tuple[dict[Path, str], dict[Path, str]]:
    """The ``.txt`` text for each record, minus files edited by hand since tunebook rendered them."""
    texts, problems = {}, {}
    for image, record in records.items():
        text = render_caption(record, render.format, render.caption_source, render.separator,
                              render.keep_separator)
        if not text:
            continue  # nothing known about this image: leave any .txt alone rather than empty it
        try:
            current = read_caption(image)
        except CaptionError as exc:
            problems[image] = str(exc)
            continue
        edited = current is not None and record.txt_sha256 is not None and sha256_text(current.strip()) != record.txt_sha256
        if edited and not render.overwrite_edited:
            problems[image] = (f"{caption_path(image)} was edited by hand since tunebook wrote it; kept as is "
                               "(tick 'overwrite edited' to replace it; it is backed up either way)")
            continue
        texts[image] = text
    return texts, problems


def preview_edit(records: dict[Path, CaptionRecord], render: RenderConfig) -> list[ChangeRow]:
    """The ``.txt`` changes ``apply_edit`` would make (sidecars change alongside)."""
    texts, _ = plan_texts(records, render)
    return preview_changes(texts, overwrite=True)


def apply_edit(records: dict[Path, CaptionRecord], render: RenderConfig | None = None) -> EditResult:
    """Save ``records`` as sidecars and, when ``render`` is given, re-render their ``.txt`` files.

    Both writes are change sets with backups (``undo_edit`` reverses them). A ``.txt`` edited by hand since the
    last render, or unreadable, is reported in ``problems`` and not touched.
    """
    result = EditResult()
    records = {image: record.copy() for image, record in records.items()}
    texts: dict[Path, str] = {}
    if render is not None:
        texts, result.problems = plan_texts(records, render)
        for image, text in texts.items():
            records[image].txt_sha256 = sha256_text(text.strip())
    result.sidecars = write_captions({image: r.to_json() for image, r in records.items()}, overwrite=True,
                                     ext=SIDECAR_EXT)
    if texts:
        result.texts = write_captions(texts, overwrite=True)
    return result


class EditWriter:
    """Saves records as a long job produces them, ``every`` images at a time, so a crash loses at most one chunk
    (a re-run skips what was saved). Each chunk is one ``apply_edit``; ``undo_edit(writer)`` reverses them all."""

    def __init__(self, render: RenderConfig | None, every: int = 256):
        self.render, self.every = render, every
        self.pending: dict[Path, CaptionRecord] = {}
        self.edits: list[EditResult] = []
        self.problems: dict[Path, str] = {}
        self.count = 0

    def add(self, image: Path, record: CaptionRecord) -> None:
        self.pending[image] = record
        self.count += 1
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            edit = apply_edit(self.pending, self.render)
            self.edits.append(edit)
            self.problems.update(edit.problems)
            self.pending = {}

    @property
    def backup_dirs(self) -> list[Path]:
        return [d for edit in self.edits for d in edit.backup_dirs]


def undo_edit(result: EditResult | EditWriter | list[str | os.PathLike], force: bool = False) -> list[UndoResult]:
    """Reverse an edit (newest files first: ``.txt`` before sidecars), from the result or its backup folders."""
    dirs = result.backup_dirs if hasattr(result, "backup_dirs") else [Path(p) for p in result]
    return [undo_changes(d, force=force) for d in reversed(dirs)]
