"""Trigger-word check: is each trigger really rare for *this* base model, paired and placed as the guide says?

The guide captions a concept with a **rare token paired with a known one** ("femme ewpp", "anime screencap in
lkst artstyle"), in every caption, **next to what it names** ("a woman wearing kncr outfit": at the start,
"kncr, a woman ...", it binds to the whole image and is diluted). With the base model's own tokenizers and
text-encoder embeddings this module measures, per trigger:

- the **tokens** it becomes. CLIP's BPE vocabulary is ordered by merge frequency, so a token's id is its rank;
  a piece is a *common word* when it has 3+ letters and ranks in the first ``COMMON_RANK`` merges ("redcar" =
  "red" + "car": the model reads a red car). A trigger made of common pieces, or one that is a common word,
  is not rare. Two-letter fragments ("ew" + "pp") carry little meaning: that is what the guide's tokens do;
- the **nearest vocabulary entries** of its embedding (mean of its token rows, cosine, per text encoder): if
  they mean something, so does the trigger ("sks" sits near gun words in SD 1.5);
- whether the **known token** is next to it (given, or the word most often beside it), and whether that one is
  a single whole-word token the model knows;
- its **position** in each training caption (first word or beside another word), captions where it is
  **missing**, and captions where it falls **past the token limit** (cut off: training never sees it).

``check_triggers`` gives a plain verdict per trigger ("good", "check", "change") with the reasons.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from helpers.changes import write_text_atomic
from helpers.config import option

COMMON_RANK = 10000  # CLIP's ~10k most frequent merges: car 1615, red 1893, anime 6469, outfit 6525, emma 7445
BYTE_TOKENS = 512  # CLIP BPE ids: 256 bytes, 256 bytes + "</w>", then merges in order, then 2 special tokens
MAX_PIECES = 3
WORD = re.compile(r"[\w'-]+")
# words that sit beside anything: never taken for the known token when none is given
STOPWORDS = {"a", "an", "the", "in", "of", "with", "wearing", "and", "on", "at", "by", "is", "to", "for", "from",
             "her", "his", "their", "its", "this", "that", "as", "or", "has", "holding"}


@dataclass
class TriggerCheckConfig:
    """What the trigger-check form edits (notebooks 02 and 03; ``python -m helpers.captioning triggers``)."""

    format_version: ClassVar[int] = 1
    triggers: list[str] = option([], help="trigger words to check, e.g. ewpp (one per entry)")
    known: list[str] = option([], help="the known token paired with each trigger, same order, e.g. femme (empty: "
                              "found from the captions)")
    model: str = option("", help="base model: a name in the workspace's models/, a path or a Hub repo id (its own "
                        "tokenizers and text encoders are used)")
    max_tokens: int = option(75, help="caption token limit training uses (kohya max_token_length: 75, 150 or "
                             "225)", min=75, max=225, step=75)


@dataclass
class TextSide:
    """A base model's tokenizers and token-embedding tables (what a trigger becomes, and what it is near)."""

    tokenizers: list
    embeddings: list[torch.Tensor]
    names: list[str]  # "text encoder 1" ...

    def pieces(self, text: str, index: int = 0) -> list[tuple[str, int]]:
        tok = self.tokenizers[index]
        ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
        return list(zip(tok.convert_ids_to_tokens(ids), ids, strict=True))


def load_text_side(source: str, models_dir: str | os.PathLike | None = None) -> TextSide:
    """Tokenizers and token embeddings of a base model (a workspace model name, a path or a Hub repo id); only
    the embedding tables are read, not the whole model."""
    from helpers.models.checkpoint import open_checkpoint
    from helpers.models.loader import load_tokenizers, resolve_source

    if not source.strip():
        raise ValueError("no base model given: name the model the LoRA is trained on (its tokenizers decide)")
    local = Path(models_dir) / source if models_dir is not None else None
    path = local if local is not None and local.exists() else resolve_source(source)
    with open_checkpoint(path) as ck:
        tokenizers = load_tokenizers(ck)
        components = ["te1", "te2"][: len(tokenizers)]
        tables = [ck.get(c, "text_model.embeddings.token_embedding.weight").float() for c in components]
    return TextSide(tokenizers, tables, [f"text encoder {i + 1}" for i in range(len(tables))])


# ---------------------------------------------------------------------------------------------- measures
def piece_rank(token_id: int, vocab_size: int) -> int | None:
    """Merge rank of a BPE token (0 = most frequent merge); None for single bytes and special tokens."""
    if token_id < BYTE_TOKENS or token_id >= vocab_size - 2:
        return None
    return token_id - BYTE_TOKENS


def is_common_piece(piece: str, token_id: int, vocab_size: int) -> bool:
    """A whole or part word of 3+ letters among the ``COMMON_RANK`` most frequent merges."""
    rank = piece_rank(token_id, vocab_size)
    letters = sum(ch.isalpha() for ch in piece.replace("</w>", ""))
    return rank is not None and rank < COMMON_RANK and letters >= 3


def nearest_tokens(table: torch.Tensor, ids: Sequence[int], tokenizer, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` vocabulary entries closest (cosine) to the mean of ``ids``' embedding rows, ``ids`` left out."""
    unit = torch.nn.functional.normalize(table, dim=1)
    query = torch.nn.functional.normalize(table[list(ids)].mean(0), dim=0)
    sims = unit @ query
    sims[list(ids)] = -2.0
    top = torch.topk(sims, min(k, len(sims) - len(ids)))
    names = tokenizer.convert_ids_to_tokens(top.indices.tolist())
    return [(n.replace("</w>", ""), round(float(s), 3)) for n, s in zip(names, top.values.tolist(), strict=True)]


@dataclass
class Placement:
    """Where a trigger sits in one caption."""

    word_index: int  # -1: not in the caption
    before: str = ""
    after: str = ""
    token_end: int = 0  # tokens up to the trigger's end (without the start token)


def find_placement(caption: str, trigger: str, tokenizer) -> Placement:
    """The trigger's first whole-word occurrence in ``caption`` (case-insensitive)."""
    m = re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", caption, re.IGNORECASE)
    if not m:
        return Placement(-1)
    before_words = WORD.findall(caption[:m.start()])
    after_words = WORD.findall(caption[m.end():])
    tokens = len(tokenizer(caption[:m.end()], add_special_tokens=False, verbose=False)["input_ids"])
    return Placement(len(before_words), before_words[-1] if before_words else "",
                     after_words[0] if after_words else "", tokens)


@dataclass
class TriggerReport:
    trigger: str
    pieces: list[str]
    common_pieces: list[str]
    nearest: dict[str, list[tuple[str, float]]]
    captions: int
    missing: list[str] = field(default_factory=list)
    at_start: list[str] = field(default_factory=list)
    cut_off: list[str] = field(default_factory=list)
    neighbours: dict[str, int] = field(default_factory=dict)
    known: str = ""
    known_beside: int = 0
    known_pieces: list[str] = field(default_factory=list)
    verdict: str = "good"
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _validate(triggers: Sequence[str], known: Sequence[str], side: TextSide, max_tokens: int) -> None:
    if not triggers:
        raise ValueError("no trigger word given: enter the trigger(s) your captions use")
    if len(known) > len(triggers):
        raise ValueError(f"{len(known)} known tokens for {len(triggers)} triggers: give at most one per trigger")
    for word in triggers:
        if not word.strip():
            raise ValueError("a trigger word is empty: remove the empty entry")
        n = len(side.pieces(word.strip()))
        if n > max_tokens:
            raise ValueError(f"trigger {word[:40]!r} is {n} tokens, more than the {max_tokens}-token caption limit: "
                             "a trigger is a word or two")


def check_triggers(captions: dict[str, str], triggers: Sequence[str], side: TextSide, known: Sequence[str] = (),
                   max_tokens: int = 75) -> list[TriggerReport]:
    """One report per trigger over ``captions`` ({image name: training caption}); ``ValueError`` for an empty
    trigger list or word, or one longer than ``max_tokens`` (nothing is read before these checks)."""
    _validate(triggers, known, side, max_tokens)
    reports = []
    for i, word in enumerate(t.strip() for t in triggers):
        pair = known[i].strip() if i < len(known) else ""
        reports.append(_check_one(captions, word, pair, side, max_tokens))
    return reports


def _check_one(captions: dict[str, str], word: str, known: str, side: TextSide, max_tokens: int) -> TriggerReport:
    tokenizer, vocab = side.tokenizers[0], side.embeddings[0].shape[0]
    pieces = side.pieces(word)
    common = [p for p, i in pieces if is_common_piece(p, i, vocab)]
    nearest = {name: nearest_tokens(table, [i for _, i in side.pieces(word, n)], side.tokenizers[n])
               for n, (name, table) in enumerate(zip(side.names, side.embeddings, strict=True))}
    report = TriggerReport(word, [p for p, _ in pieces], common, nearest, len(captions))
    for name, caption in captions.items():
        place = find_placement(caption, word, tokenizer)
        if place.word_index < 0:
            report.missing.append(name)
            continue
        if place.word_index == 0:
            report.at_start.append(name)
        if place.token_end > max_tokens:
            report.cut_off.append(name)
        for neighbour in (place.before, place.after):
            if neighbour:
                report.neighbours[neighbour.lower()] = report.neighbours.get(neighbour.lower(), 0) + 1
        if known and known.lower() in (place.before.lower(), place.after.lower()):
            report.known_beside += 1
    report.neighbours = dict(Counter(report.neighbours).most_common(5))
    report.known = known or next((w for w in report.neighbours if w not in STOPWORDS), "")
    if report.known:
        report.known_pieces = [p.replace("</w>", "") for p, _ in side.pieces(report.known)]
        if not known:
            report.known_beside = report.neighbours[report.known]
    report.verdict, report.reasons = verdict(report, len(pieces) == 1 and bool(common), max_tokens)
    return report


def verdict(r: TriggerReport, common_word: bool, max_tokens: int) -> tuple[str, list[str]]:
    """("good" | "check" | "change", reasons) from a report's measures."""
    change, check = [], []
    shown = " + ".join(p.replace("</w>", "") for p in r.pieces)
    if common_word:
        change.append(f"'{r.trigger}' is a common word for this model (one frequent token): it already means "
                      "something; pick a rare token")
    elif r.common_pieces and len(r.common_pieces) == len(r.pieces):
        change.append(f"splits into common words ({shown}): the model reads those words, not a new token")
    elif r.common_pieces:
        check.append(f"contains common word pieces ({', '.join(p.replace('</w>', '') for p in r.common_pieces)} "
                     f"of {shown}): they pull toward their meaning")
    if len(r.pieces) > MAX_PIECES:
        check.append(f"becomes {len(r.pieces)} tokens ({shown}): a short rare token (2-3 pieces) is easier to bind")
    if r.captions and len(r.missing) == r.captions:
        change.append(f"in none of the {r.captions} captions: add it to every caption (the guide)")
    elif r.missing:
        check.append(f"missing in {len(r.missing)} of {r.captions} captions (e.g. {', '.join(r.missing[:3])}): the "
                     "guide puts it in every caption")
    present = r.captions - len(r.missing)
    if present >= 2 and len(r.at_start) == present:
        change.append("at the start of every caption: there it binds to the whole image and is diluted; put it "
                      "next to what it names ('a woman wearing kncr outfit')")
    elif present and len(r.at_start) * 2 >= present:
        check.append(f"at the start of {len(r.at_start)} of {present} captions: put it next to what it names")
    if r.cut_off:
        change.append(f"past the {max_tokens}-token limit in {len(r.cut_off)} captions (training never sees it "
                      "there): move it forward or shorten them")
    if present and r.known and r.known_beside < present:
        check.append(f"the known token '{r.known}' is beside it in {r.known_beside} of {present} captions: pair "
                     "them every time ('femme ewpp')")
    elif present and not r.known:
        check.append("no known token beside it: the guide pairs the rare token with a known one ('femme ewpp')")
    if r.known and len(r.known_pieces) > 1:
        check.append(f"the known token '{r.known}' is not one token for this model ({' + '.join(r.known_pieces)})")
    level = "change" if change else "check" if check else "good"
    return level, change + check


def format_trigger_reports(reports: list[TriggerReport]) -> str:
    lines = []
    for r in reports:
        present = r.captions - len(r.missing)
        lines.append(f"{r.trigger}: {r.verdict.upper()} — tokens {' + '.join(p.replace('</w>', '') for p in r.pieces)}; "
                     f"in {present}/{r.captions} captions, first word in {len(r.at_start)}; beside: "
                     + (", ".join(f"{w} {n}" for w, n in r.neighbours.items()) or "nothing"))
        for name, near in r.nearest.items():
            lines.append(f"    nearest in {name}: " + ", ".join(f"{t} {s:.2f}" for t, s in near))
        lines += [f"    - {reason}" for reason in r.reasons] or ["    - rare, in every caption, paired and placed as "
                                                                 "the guide says"]
    return "\n".join(lines)


def training_captions(folder: str | os.PathLike) -> dict[str, str]:
    """{image path relative to ``folder``: the caption training reads} for every image training reads."""
    from helpers.dataset.files import dataset_entries

    folder = Path(folder)
    entries, _ = dataset_entries(folder)
    return {str(e.path.relative_to(folder)): e.caption or "" for e in entries}


def run_trigger_check(folder: str | os.PathLike, cfg: TriggerCheckConfig, models_dir: str | os.PathLike,
                      out_dir: str | os.PathLike | None = None) -> tuple[list[TriggerReport], Path | None]:
    """Check ``cfg.triggers`` against ``folder``'s training captions with ``cfg.model``'s text side; the reports
    are written to ``out_dir/triggers.json`` when given. ``ValueError`` for bad input, before any loading."""
    if not cfg.triggers or not all(t.strip() for t in cfg.triggers):
        raise ValueError("no trigger word given (or an empty one): enter the trigger(s) your captions use")
    captions = training_captions(folder)
    if not captions:
        raise ValueError(f"{folder}: no images, so no captions to check")
    side = load_text_side(cfg.model, models_dir)
    reports = check_triggers(captions, cfg.triggers, side, cfg.known, cfg.max_tokens)
    path = None
    if out_dir is not None:
        path = write_text_atomic(Path(out_dir) / "triggers.json", json.dumps(
            {"model": cfg.model, "max_tokens": cfg.max_tokens, "checked": list(cfg.triggers), "known": list(cfg.known),
             "triggers": [r.to_dict() for r in reports]}, indent=1))
    return reports, path
