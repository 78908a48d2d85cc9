"""Per-step captions: what the text encoder reads for one sample, drawn from the sample's own generator.

Owns ``CaptionConfig`` (the run's ``[captions]`` section) and ``CaptionPipeline``, which the dataset calls for
every sample. The steps, in order (sd-scripts ``BaseDataset.process_caption`` plus the hyperfusion and Kohaku
recipes' additions):

1. caption dropout: every N-th epoch, or by chance -> "" (the unconditional caption);
2. with ``<image>.captions.json`` records (``captioning.sidecar``), pick tags, the natural-language caption,
   or both in random order by the ``mix_*`` chances (hyperfusion 70/20/10);
3. wildcards ``{a|b|c}`` -> one of them;
4. split the tags: before a ``|||`` (or the first ``keep_tokens``) stay first, after a second ``|||`` stay
   last; ``fixed_tags`` (Kohaku's quality/rating/date tags) keep their places;
5. the other tags: important tags first, each group shuffled; implied tags dropped (``implications``),
   each tag dropped by chance, and sometimes most of them ("short captions", hyperfusion 75 % 5 % of the time);
6. join with ", ", add prefix and suffix.

``|||`` never reaches the text encoder. Every random choice comes from the generator ``training.data``
seeds by (seed, epoch, position), so a sample's caption depends only on where it is in the run: a resumed
run sees exactly the captions an uninterrupted one would have seen, whatever the number of loader workers.
"""

from __future__ import annotations

import functools
import random
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from helpers.captioning.sidecar import SIDECAR_EXT, parse_record, sidecar_path
from helpers.captioning.tags import KEEP_SEPARATOR, TagPatterns, tag_key
from helpers.changes import sha256_text
from helpers.config import option
from helpers.dataset.caption_files import caption_path, read_caption
from helpers.models.prompt_chunks import token_limit_problem
from helpers.training.implications import ImplicationError, TagImplications, load_implications

WILDCARD = re.compile(r"\{([^}]+)\}")  # kohya enable_wildcard: {a|b|c}; "{{" and "}}" are literal braces
cached_tag_key = functools.lru_cache(maxsize=1 << 16)(tag_key)  # a dataset's tags repeat: ~5x faster captions


@dataclass
class CaptionConfig:
    """What the text encoder reads for each sample: caption edits drawn per step, and the token limit."""

    shuffle_caption: bool = option(False, help="shuffle comma-separated tags each step (kept and fixed tags "
                                   "stay in place)")
    keep_tokens: int = option(0, min=0, max=100, help="the first N tags stay first (a caption with '|||' keeps "
                              "the tags before it instead, and the tags after a second '|||' stay last)")
    tag_dropout: float = option(0.0, min=0.0, max=1.0, help="chance to drop each tag that is not kept or fixed "
                                "(Kohaku: 0.15)")
    caption_dropout: float = option(0.0, min=0.0, max=1.0, help="chance to train an image with an empty caption "
                                    "(hyperfusion: 0.1)")
    max_token_length: int = option(75, step=75, help="caption tokens the text encoders read: 75 = plain CLIP; "
                                   "150, 225 ... 525 = kohya's 75-token chunks (longer captions are cut)")
    clip_skip: int = option(1, min=1, max=12, help="SD 1.5: read the text encoder's N-th layer from the end "
                            "(2 for NovelAI-style anime models); SDXL always reads the penultimate")
    caption_dropout_every_n_epochs: int = option(0, min=0, max=10_000, help="empty captions for a whole epoch "
                                                 "every N epochs (kohya; 0 = never)", group="dropout")
    short_caption_chance: float = option(0.0, min=0.0, max=1.0, help="chance that a step drops most tags, so "
                                         "short prompts work too (hyperfusion: 0.05)", group="dropout")
    short_caption_dropout: float = option(0.75, min=0.0, max=1.0, help="share of the droppable tags dropped "
                                          "when it does (hyperfusion: 0.75)", group="dropout")
    implications_csv: str = option("", kind="path", help="tag implications, one 'antecedent,consequent' per row "
                                   "(Danbooru/e621 tag_implications export)", group="dropout")
    implication_dropout: float = option(0.0, min=0.0, max=1.0, help="chance to drop a tag that another tag of "
                                        "the caption implies ('breasts' beside 'large breasts'; hyperfusion: "
                                        "0.3-0.5)", group="dropout")
    fixed_tags: list[str] = option([], help="tags that never move or drop (Kohaku: quality, rating and date "
                                   "tags stay put while general tags shuffle); * matches any text", group="tags")
    important_tags: list[str] = option([], help="tags moved to the front (after kept tags), shuffled among "
                                       "themselves; * matches any text", group="tags")
    caption_separator: str = option(",", help="tag separator in caption files", group="tags")
    wildcards: bool = option(False, help="{a|b|c} in a caption becomes one of a, b, c each step ({{ and }} "
                             "are literal braces)", group="tags")
    caption_prefix: str = option("", help="put before every caption that is not dropped (never shuffled)",
                                 group="tags")
    caption_suffix: str = option("", help="put after every caption that is not dropped (never shuffled)",
                                 group="tags")
    mix_tags: float = option(1.0, min=0.0, max=1.0, help="with <image>.captions.json records: chance to train on "
                             "the tags (hyperfusion: 0.7)", group="tags and captions")
    mix_caption: float = option(0.0, min=0.0, max=1.0, help="... on the natural-language caption (hyperfusion: "
                                "0.2)", group="tags and captions")
    mix_both: float = option(0.0, min=0.0, max=1.0, help="... on both, in random order (hyperfusion: 0.1); the "
                             "three chances add up to 1", group="tags and captions")

    def problems(self) -> dict[str, str]:
        """Field problems of this section (keys without the prefix), found before any model is loaded."""
        problems: dict[str, str] = {}
        token_problem = token_limit_problem(self.max_token_length)
        if token_problem:
            problems["max_token_length"] = token_problem
        total = self.mix_tags + self.mix_caption + self.mix_both
        if abs(total - 1.0) > 1e-6:
            problems["mix_tags"] = (f"mix_tags + mix_caption + mix_both = {total:g}: they must add up to 1 "
                                    "(e.g. 0.7, 0.2, 0.1 as hyperfusion; 1, 0, 0 = the .txt only)")
        if not self.caption_separator.strip() or KEEP_SEPARATOR in self.caption_separator:
            problems["caption_separator"] = f"{self.caption_separator!r} cannot separate tags: use ','"
        if self.implication_dropout and not self.implications_csv:
            problems["implications_csv"] = "implication_dropout needs an implications CSV (or set it to 0)"
        elif self.implications_csv:
            try:
                load_implications(self.implications_csv)
            except ImplicationError as exc:
                problems["implications_csv"] = str(exc)
        return problems

    @property
    def mixes(self) -> bool:
        """Whether captions come from ``.captions.json`` records (any chance other than tags-only)."""
        return self.mix_tags < 1.0


@dataclass(frozen=True)
class CaptionSource:
    """One image's caption material: its caption file's text, and its record's tags and caption when mixing."""

    text: str
    tags: tuple[str, ...] | None = None  # None: no record in use, the text is the caption
    keep: int = 0
    prose: str = ""


# ---------------------------------------------------------------- pure steps


def expand_wildcards(text: str, rng: random.Random) -> str:
    """``{a|b|c}`` -> one of a, b, c (kohya ``enable_wildcard``); ``{{`` and ``}}`` are literal braces."""
    if "{" not in text:
        return text
    text = text.replace("{{", "\x00").replace("}}", "\x01")
    text = WILDCARD.sub(lambda m: rng.choice(m.group(1).split("|")), text)
    return text.replace("\x00", "{").replace("\x01", "}")


def split_sections(text: str, separator: str, keep_tokens: int) -> tuple[list[str], list[str], list[str]]:
    """(kept head, free middle, kept tail) tags of a caption.

    kohya ``keep_tokens_separator`` semantics: tags before a ``|||`` are the head, after a second ``|||`` the
    tail; a caption without one keeps its first ``keep_tokens`` tags.
    """
    def tags(part: str) -> list[str]:
        return [t.strip() for t in part.split(separator) if t.strip()]

    if KEEP_SEPARATOR in text:
        head, rest = text.split(KEEP_SEPARATOR, 1)
        middle, _, tail = rest.partition(KEEP_SEPARATOR)
        return tags(head), tags(middle), tags(tail.replace(KEEP_SEPARATOR, separator))
    every = tags(text)
    return every[:keep_tokens], every[keep_tokens:], []


def place_free_tags(tags: Sequence[str], fixed: Sequence[bool], free: Sequence[str]) -> list[str]:
    """``tags`` with its fixed tags where they were and ``free`` filling the other places in order (free
    places left over, when tags were dropped, close up)."""
    out, pending = [], iter(free)
    for tag, is_fixed in zip(tags, fixed, strict=True):
        if is_fixed:
            out.append(tag)
        else:
            out.extend(t for t in [next(pending, None)] if t is not None)
    return out


def drop_share(tags: list[str], share: float, rng: random.Random) -> list[str]:
    """``tags`` less ⌊share · n⌋ of them, chosen at random, order kept."""
    dropped = set(rng.sample(range(len(tags)), int(share * len(tags))))
    return [t for i, t in enumerate(tags) if i not in dropped]


def join_caption(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


# ---------------------------------------------------------------- the pipeline


class CaptionPipeline:
    """The caption of each sample from its image's source, epoch and generator (picklable for loader workers)."""

    def __init__(self, sources: list[CaptionSource], cfg: CaptionConfig, implications: TagImplications | None = None):
        self.sources, self.cfg, self.implications = sources, cfg, implications
        self.fixed, self.important = TagPatterns(cfg.fixed_tags), TagPatterns(cfg.important_tags)
        self.edits_tags = bool(cfg.shuffle_caption or cfg.tag_dropout or cfg.short_caption_chance
                               or cfg.important_tags or (implications and cfg.implication_dropout))
        self.prefix = cfg.caption_prefix.strip().rstrip(cfg.caption_separator).strip()
        self.suffix = cfg.caption_suffix.strip().lstrip(cfg.caption_separator).strip()

    def __call__(self, index: int, epoch: int, rng: random.Random) -> str:
        """Sample ``index``'s caption in (0-based) ``epoch``; draws from ``rng`` in a fixed order."""
        c = self.cfg
        if c.caption_dropout_every_n_epochs and (epoch + 1) % c.caption_dropout_every_n_epochs == 0:
            return ""  # kohya counts epochs from 1: n = 3 drops epochs 3, 6, 9 ...
        if c.caption_dropout and rng.random() < c.caption_dropout:
            return ""
        source = self.sources[index]
        if source.tags is None:
            text = expand_wildcards(source.text, rng) if c.wildcards else source.text
            if not self.edits_tags and KEEP_SEPARATOR not in text:
                return join_caption(self.prefix, text, self.suffix)
            head, middle, tail = split_sections(text, c.caption_separator, c.keep_tokens)
            return join_caption(self.prefix, self.edit_tags(head, middle, tail, rng), self.suffix)
        kind = self.choose_kind(bool(source.tags), bool(source.prose), rng)
        prose = expand_wildcards(source.prose, rng) if c.wildcards else source.prose
        tags = [expand_wildcards(t, rng) for t in source.tags] if c.wildcards else list(source.tags)
        keep = source.keep or c.keep_tokens  # a record without kept tags keeps the configured first N
        tag_text = self.edit_tags(tags[:keep], tags[keep:], [], rng) if kind != "caption" else ""
        parts = {"tags": [tag_text], "caption": [prose], "tags, caption": [tag_text, prose],
                 "caption, tags": [prose, tag_text]}[kind]
        return join_caption(self.prefix, *parts, self.suffix)

    def choose_kind(self, has_tags: bool, has_prose: bool, rng: random.Random) -> str:
        """"tags", "caption", "tags, caption" or "caption, tags" by the mix chances (only kinds that exist)."""
        if not (has_tags and has_prose):
            return "tags" if has_tags else "caption"
        draw = rng.random()
        if draw < self.cfg.mix_tags:
            return "tags"
        if draw < self.cfg.mix_tags + self.cfg.mix_caption:
            return "caption"
        return "tags, caption" if rng.random() < 0.5 else "caption, tags"

    def edit_tags(self, head: list[str], middle: list[str], tail: list[str], rng: random.Random) -> str:
        """Steps 4-6 of the module docstring on one caption's tags; returns them joined."""
        c = self.cfg
        keys = {t: cached_tag_key(t) for t in head + middle + tail}
        fixed = [self.fixed.has_key(keys[t]) for t in middle]
        free = [t for t, f in zip(middle, fixed, strict=True) if not f]
        important = [t for t in free if self.important.has_key(keys[t])] if self.important else []
        rest = [t for t in free if not self.important.has_key(keys[t])] if self.important else free
        if c.shuffle_caption:
            rng.shuffle(important)
            rng.shuffle(rest)
        free = important + rest
        if self.implications is not None and c.implication_dropout:
            implied = self.implications.implied_by(list(keys.values()))
            free = [t for t in free if keys[t] not in implied or rng.random() >= c.implication_dropout]
        if c.tag_dropout:
            free = [t for t in free if rng.random() >= c.tag_dropout]
        if c.short_caption_chance and rng.random() < c.short_caption_chance:
            free = drop_share(free, c.short_caption_dropout, rng)
        return ", ".join(head + place_free_tags(middle, fixed, free) + tail)


# ---------------------------------------------------------------- building


def no_flip_images(sources: list[CaptionSource], patterns: list[str], separator: str) -> list[bool]:
    """Per image, whether its caption has one of ``patterns`` (hyperfusion ``--no_flip_when_cap_matches``:
    text, asymmetric features ... must not be mirrored); compared by ``tag_key``, ``*`` matches any text."""
    wanted = TagPatterns(patterns)
    if not wanted:
        return [False] * len(sources)
    out = []
    for source in sources:
        tags = [t.strip() for t in source.text.replace(KEEP_SEPARATOR, separator).split(separator)]
        out.append(any(t in wanted for t in [*tags, *(source.tags or ())] if t))
    return out


def load_caption_sources(images: list[Path], texts: list[str], use_records: bool,
                         show_progress: bool = False) -> list[CaptionSource]:
    """Each image's caption material: its caption text, plus its ``.captions.json`` record when mixing.

    A caption file edited by hand since tunebook rendered it from the record wins over the record (a warning
    counts them). A damaged record raises ``CaptionError`` naming the file.
    """
    if not use_records:
        return [CaptionSource(t) for t in texts]
    from tqdm.auto import tqdm

    sources, edited = [], 0
    for image, text in tqdm(list(zip(images, texts, strict=True)), desc="reading caption records", unit="img",
                            disable=not show_progress):
        raw = read_caption(image, SIDECAR_EXT)
        record = parse_record(raw, str(sidecar_path(image))) if raw is not None else None
        if record is not None and record.txt_sha256 and caption_path(image).exists() \
                and sha256_text(text.strip()) != record.txt_sha256:
            edited += 1
            record = None
        if record is None or not (record.tags or record.captions):
            sources.append(CaptionSource(text))
        else:
            sources.append(CaptionSource(text, tuple(record.tags), min(record.keep, len(record.tags)),
                                         record.caption() or ""))
    if edited:
        warnings.warn(f"{edited} caption file(s) were edited by hand after tunebook wrote them from their "
                      ".captions.json: those images train on the edited file, not the tag/caption mix", stacklevel=2)
    return sources


def build_caption_pipeline(cfg: CaptionConfig, images: list[Path], texts: list[str],
                           show_progress: bool = False) -> CaptionPipeline:
    """The pipeline for these images (reads records when mixing, and the implications file when given)."""
    implications = load_implications(cfg.implications_csv) if cfg.implications_csv else None
    return CaptionPipeline(load_caption_sources(images, texts, cfg.mixes, show_progress), cfg, implications)
