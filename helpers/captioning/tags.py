"""Tag text rules shared by the tagger, the booru formatter and the curation tools (pure functions).

Danbooru names keep underscores and parentheses (``long_hair``, ``alear_(female)_(fire_emblem)``); training
captions want spaces, except inside short emoticon tags such as ``^_^`` or ``>_<`` where the underscore is the
mouth. Two conventions exist and both are supported:

- "length": replace only when the tag is longer than 3 characters (kohya ``--remove_underscore``, HakuBooru,
  the Kohaku XL card: "Underscores in short tags are not removed");
- "kaomoji": replace unless the tag is in the emoticon list of SmilingWolf's wd-tagger Space / imgutils;
- "both" (default): keep the underscore when either rule says so (``<o>_<o>`` is 7 characters long).

Escaping ``(``/``)`` as ``\\(``/``\\)`` is only for prompts typed into A1111/ComfyUI, where brackets mean weight.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

UnderscoreRule = Literal["both", "length", "kaomoji", "keep"]

# emoticon tags whose underscore is part of the face (wd-tagger Space app.py / imgutils remove_underline list)
KAOMOJI = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
                     ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})

KEEP_SEPARATOR = "|||"  # kohya keep_tokens_separator: what comes before it is never shuffled


def keeps_underscore(name: str, rule: UnderscoreRule = "both") -> bool:
    """Whether ``name``'s underscores stay under ``rule`` (see the module docstring)."""
    if rule == "keep":
        return True
    short = len(name) <= 3
    if rule == "length":
        return short
    if rule == "kaomoji":
        return name in KAOMOJI
    if rule == "both":
        return short or name in KAOMOJI
    raise ValueError(f"unknown underscore rule {rule!r}: use 'both', 'length', 'kaomoji' or 'keep'")


def format_tag(name: str, underscores: UnderscoreRule = "both", escape: bool = False) -> str:
    """A Danbooru tag name as caption text: underscores to spaces by ``underscores``, optional A1111 escaping."""
    name = name.strip()
    text = name if keeps_underscore(name, underscores) else name.replace("_", " ")
    return escape_brackets(text) if escape else text


def escape_brackets(text: str) -> str:
    """``(`` -> ``\\(`` and ``)`` -> ``\\)`` (A1111/ComfyUI prompt syntax), without escaping twice."""
    return re.sub(r"(?<!\\)([()])", r"\\\1", text)


def unescape_brackets(text: str) -> str:
    return text.replace("\\(", "(").replace("\\)", ")")


def tag_key(tag: str) -> str:
    """The form two spellings of one tag share: lower case, unescaped, underscores as spaces (not in emoticons)."""
    tag = unescape_brackets(tag.strip()).lower()
    return tag if keeps_underscore(tag, "both") else tag.replace("_", " ")


def split_tags(text: str, separator: str = ",") -> list[str]:
    """Comma-separated caption text -> tags (stripped, empty ones and ``|||`` markers dropped)."""
    parts = []
    for chunk in text.replace(KEEP_SEPARATOR, separator).split(separator):
        chunk = " ".join(chunk.split())
        if chunk:
            parts.append(chunk)
    return parts


def join_tags(tags: Iterable[str], separator: str = ", ") -> str:
    return separator.join(t for t in tags if t)


def dedupe_tags(tags: Iterable[str]) -> list[str]:
    """Drop repeated tags (compared by ``tag_key``), keeping the first occurrence and the order."""
    seen: set[str] = set()
    out = []
    for tag in tags:
        key = tag_key(tag)
        if key and key not in seen:
            seen.add(key)
            out.append(tag)
    return out


class TagPatterns:
    """A set of tags to look for, compared by ``tag_key``; a ``*`` in a pattern matches any text (``text on*``).

    Picklable, so training's loader workers can hold one.
    """

    def __init__(self, patterns: Iterable[str]):
        self.exact: set[str] = set()
        wildcards = []
        for pattern in patterns:
            key = tag_key(pattern)
            if "*" in key:
                wildcards.append(".*".join(re.escape(p) for p in key.split("*")))
            elif key:
                self.exact.add(key)
        self.wildcard = re.compile("^(?:" + "|".join(wildcards) + ")$") if wildcards else None

    def __bool__(self) -> bool:
        return bool(self.exact or self.wildcard)

    def __contains__(self, tag: str) -> bool:
        return self.has_key(tag_key(tag))

    def has_key(self, key: str) -> bool:
        """Whether a tag whose ``tag_key`` is ``key`` is in the set (callers that already have the key)."""
        return key in self.exact or (self.wildcard is not None and self.wildcard.match(key) is not None)


def remove_tags(tags: Sequence[str], unwanted: Iterable[str]) -> list[str]:
    """``tags`` without any of ``unwanted`` (compared by ``tag_key``; a ``*`` in an unwanted tag is a wildcard)."""
    patterns = TagPatterns(unwanted)
    return [t for t in tags if t not in patterns]


def replace_tags(tags: Sequence[str], mapping: dict[str, str]) -> list[str]:
    """Replace tags by ``mapping`` (old -> new; an empty new removes the tag), then dedupe."""
    by_key = {tag_key(old): new for old, new in mapping.items()}
    out = []
    for tag in tags:
        new = by_key.get(tag_key(tag), tag)
        out.extend(split_tags(new))  # "a, b" replaces one tag by two
    return dedupe_tags(out)


def sort_tags(tags: Sequence[str], order: Literal["alphabetical", "frequency"] = "alphabetical",
              counts: dict[str, int] | None = None, keep_first: int = 0) -> list[str]:
    """Sort ``tags`` after the first ``keep_first``; "frequency" puts the dataset's most common first."""
    head, tail = list(tags[:keep_first]), list(tags[keep_first:])
    if order == "alphabetical":
        tail.sort(key=tag_key)
    elif order == "frequency":
        counts = counts or {}
        tail.sort(key=lambda t: (-counts.get(tag_key(t), 0), tag_key(t)))
    else:
        raise ValueError(f"unknown sort order {order!r}: use 'alphabetical' or 'frequency'")
    return head + tail


def mcut_threshold(probs: Sequence[float]) -> float:
    """Maximum Cut Thresholding: the midpoint of the largest gap between neighbouring sorted scores.

    Largeron, Moulin, Géry, "MCut: A Thresholding Strategy for Multi-label Classification", IDA 2012.
    With fewer than two scores there is no gap; the threshold is then 1.0 (nothing passes a strict ``>``).
    """
    ranked = sorted((float(p) for p in probs), reverse=True)
    if len(ranked) < 2:
        return 1.0
    gaps = [ranked[i] - ranked[i + 1] for i in range(len(ranked) - 1)]
    t = max(range(len(gaps)), key=gaps.__getitem__)
    return (ranked[t] + ranked[t + 1]) / 2


# booru rating -> the rating tags a caption gets (Kohaku XL: explicit also counts as nsfw)
RATING_TAGS = {"general": ["safe"], "sensitive": ["sensitive"], "questionable": ["nsfw"],
               "explicit": ["nsfw", "explicit"]}


def merge_tags(old: list[str], new: list[str], mode: str) -> list[str]:
    """Combine an image's existing tags with the tagger's by ``mode`` (overwrite / append / prepend)."""
    if mode == "overwrite":
        return list(new)
    if mode == "append":
        return dedupe_tags(old + new)
    if mode == "prepend":
        return dedupe_tags(new + old)
    raise ValueError(f"unknown mode {mode!r}: use overwrite, append or prepend")
