"""What a dataset shows, against the guide's balance list: zero-shot categories, shot types, times of day.

The guide asks style datasets to hold, "with the ratios between them mostly balanced", animals, landscapes and
scenes at different times of day, men and women young / middle-aged / old in close-up, medium and full-length
shots, vehicles, fire, water, plants, sky, ruins, buildings, glass, screens, signs. This module counts them with
an image-text encoder (``helpers.models.encoders``; embeddings cached per image hash):

- **categories** (multi-label): each category is one or more prompts; an image's similarity to a category is
  its best prompt's (each prompt averaged over ``TEMPLATES``). The similarities become probabilities with the
  encoder's own softmax over the categories (CLIP's zero-shot classifier), and an image counts in **every
  category whose probability is at least ``threshold``** (default 0.15: a clear subject takes 0.5 or more, a
  second subject in the picture 0.15-0.4; with the guide's 24 categories the even share is 0.04). An image
  with no category that high is "unclassified". Lower the threshold for more labels per image.
- **shot type** (one per image: close-up / medium / full-length) for images counted in a person category (all
  images when the list has none), and **time of day** (day / sunset or sunrise / night) for scene categories.
- **balance**: the mean count over categories; a category with no image is *missing*, one with more than
  ``over_factor`` x the mean *over-represented*, one with less than mean / ``over_factor`` *under-represented*.

Category lists are text lines, ``name [person|scene]: prompt | prompt`` (without ``:``, the name's comma-separated
words are the prompts); ``PRESETS`` holds the guide's list (style) and lists for characters and concepts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from PIL import Image

from helpers.config import option
from helpers.models.encoders import DEFAULT_ENCODER, ImageEncoder

TEMPLATES = ("{}", "a picture of {}.", "an image showing {}.")  # medium-neutral: style datasets are rarely photos

PRESETS: dict[str, list[str]] = {
    "style": [  # the guide's list, in its order
        "animals, insects, monsters, creatures: an animal | an insect | a monster | a creature",
        "landscapes [scene]: a landscape | nature scenery",
        "exterior scenes [scene]: an outdoor street scene | the outside of buildings in a town",
        "indoor scenes [scene]: an indoor room | an interior scene",
        "objects: an object | a still life of objects",
        "men - young [person]: a young man | a boy",
        "women - young [person]: a young woman | a girl",
        "men - middle-age [person]: a middle-aged man",
        "women - middle-age [person]: a middle-aged woman",
        "men - old [person]: an old man",
        "women - old [person]: an old woman",
        "land vehicle, water vehicle, air vehicle: a car | a ship | an airplane",
        "fire, smoke: fire | smoke",
        "water, underwater: water | an underwater scene",
        "plants, flowers: plants | flowers",
        "ground: the ground",
        "sand, dirt, stone: sand | dirt | stone",
        "eyes: a close-up of eyes",
        "sky: the sky",
        "ruins, ruined, abandoned, overgrown, rusted: ruins | an abandoned overgrown place | rusted metal",
        "building: a building",
        "windows, transparent, glass, reflective: a window | glass | a reflective surface",
        "electronic screens: an electronic screen | a computer monitor",
        "letters, paper, signs: a letter | paper | a sign with writing",
    ],
    "character": [  # the guide: several styles of the character in roughly equal ratios, several points of view
        "anime screencap [person]: an anime screencap | a frame from an animated show",
        "fan art [person]: fan art | a digital illustration of a character",
        "cosplay photo [person]: a cosplay photo | a photo of a person in costume",
        "3d render [person]: a 3d render | a video game character model",
        "sketch [person]: a pencil sketch | line art",
        "group of people: a group of people | a crowd",
        "indoor background [scene]: an indoor room",
        "outdoor background [scene]: an outdoor scene",
    ],
    "concept": [
        "photo: a photo",
        "anime or cartoon: an anime picture | a cartoon",
        "painting or illustration: a painting | an illustration",
        "3d render: a 3d render",
        "close-up of the subject: a close-up of an object",
        "with a person [person]: a person wearing or holding something",
        "indoor [scene]: an indoor room",
        "outdoor [scene]: an outdoor scene",
    ],
}
SHOTS = ["close-up: a close-up portrait of a face | a headshot",
         "medium shot: a medium shot of a person from the waist up | a half-body portrait",
         "full-length: a full-length shot of a person from head to toe | a full-body picture of a standing person"]
TIMES = ["day: a scene in daylight | a sunny day", "sunset or sunrise: a scene at sunset | dawn, golden hour",
         "night: a scene at night | a dark night scene"]


@dataclass(frozen=True)
class Category:
    name: str
    prompts: tuple[str, ...]
    kind: str = ""  # "person": gets a shot type; "scene": gets a time of day


_LINE = re.compile(r"^\s*(?P<name>[^:\[\]]+?)\s*(?:\[(?P<kind>person|scene)\])?\s*(?::(?P<prompts>.*))?$")


def parse_categories(lines: Sequence[str]) -> list[Category]:
    """Category lines -> categories; ``ValueError`` naming the line for one that does not fit, or for none."""
    out, seen = [], set()
    for line in lines:
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"category {line!r}: write it as 'name', 'name: prompt | prompt' or "
                             "'name [person]: prompt' ([scene] for scenes)")
        name = m.group("name").strip()
        text = m.group("prompts")
        prompts = [p.strip() for p in (text.split("|") if text is not None else name.split(","))]
        if not all(prompts) or not name:
            raise ValueError(f"category {line!r}: an empty name or prompt")
        if name.lower() in seen:
            raise ValueError(f"category {name!r} is listed twice")
        seen.add(name.lower())
        out.append(Category(name, tuple(prompts), m.group("kind") or ""))
    if not out:
        raise ValueError("no categories: give at least one line (or leave the list empty to use the preset's)")
    return out


def preset_lines(preset: str) -> list[str]:
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return list(PRESETS[preset])


@dataclass
class CompositionConfig:
    """What notebook 01's composition form edits (and ``python -m helpers.dataset composition``'s flags)."""

    format_version: ClassVar[int] = 1
    preset: Literal["style", "character", "concept"] = option(
        "style", help="category list: the guide's list for style datasets, or one for a character or a concept")
    categories: list[str] = option([], help="your own list instead of the preset's, one per line: 'name [person|"
                                   "scene]: prompt | prompt' (empty: the preset's)")
    threshold: float = option(0.15, help="an image counts in each category whose probability is at least this "
                              "(multi-label; lower it for more labels per image)", min=0.01, max=0.99, step=0.01)
    over_factor: float = option(2.0, help="over-represented: more than this many times the mean count; "
                                "under-represented: less than the mean divided by it", min=1.1, max=10.0,
                                group="advanced")
    encoder: str = option(DEFAULT_ENCODER, help="image-text encoder: a short name (clip-vit-large-patch14, "
                          "siglip-so400m), a Hub repo id or a folder; downloaded into the workspace once")
    batch_size: int = option(32, help="images per encoder call", min=1, max=512, group="advanced")
    device: Literal["auto", "cuda", "cpu"] = option("auto", help="auto: the GPU when there is one",
                                                    group="advanced")


# ---------------------------------------------------------------------------------------------- classifying
def prompt_vectors(encoder: ImageEncoder, categories: Sequence[Category]) -> tuple[np.ndarray, np.ndarray]:
    """(prompt rows, owning category index per row): each prompt averaged over ``TEMPLATES`` (CLIP's prompt
    ensembling, Radford et al. 2021 section 3.1.4) and normalised again."""
    prompts = [(i, p) for i, c in enumerate(categories) for p in c.prompts]
    texts = [t.format(p) for _, p in prompts for t in TEMPLATES]
    rows = encoder.embed_texts(texts).reshape(len(prompts), len(TEMPLATES), -1).mean(axis=1)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True).clip(1e-12)
    return rows, np.array([i for i, _ in prompts])


def category_similarity(images: np.ndarray, prompts: np.ndarray, owner: np.ndarray, count: int) -> np.ndarray:
    """(n, count) cosine of each image to each category: the best of the category's prompts."""
    sims = images @ prompts.T
    out = np.full((len(images), count), -1.0, dtype=np.float32)
    for i in range(count):
        out[:, i] = sims[:, owner == i].max(axis=1)
    return out


def zero_shot_probabilities(similarity: np.ndarray, logit_scale: float) -> np.ndarray:
    """Softmax over categories of ``logit_scale`` x cosine, row by row (CLIP's zero-shot classifier)."""
    logits = similarity * logit_scale
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def multi_labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    """(n, k) booleans: every category at or above ``threshold``."""
    return probs >= threshold


def balance(counts: dict[str, int], over_factor: float) -> dict[str, object]:
    """Mean count, and the categories missing, under- and over-represented against it."""
    mean = sum(counts.values()) / len(counts) if counts else 0.0
    return {"mean": round(mean, 2), "band": [round(mean / over_factor, 2), round(mean * over_factor, 2)],
            "missing": [k for k, v in counts.items() if v == 0],
            "under": [k for k, v in counts.items() if 0 < v < mean / over_factor],
            "over": [k for k, v in counts.items() if v > mean * over_factor]}


@dataclass
class Composition:
    """Per image: category probabilities and labels, shot type, time of day; the counts and balance."""

    folder: Path
    encoder: str
    threshold: float
    categories: list[Category]
    paths: list[Path]
    probs: np.ndarray  # (n, k)
    labels: np.ndarray  # (n, k) bool
    shots: dict[Path, tuple[str, float]] = field(default_factory=dict)
    times: dict[Path, tuple[str, float]] = field(default_factory=dict)
    problems: dict[Path, str] = field(default_factory=dict)
    over_factor: float = 2.0

    @property
    def counts(self) -> dict[str, int]:
        return {c.name: int(n) for c, n in zip(self.categories, self.labels.sum(axis=0), strict=True)}

    @property
    def unclassified(self) -> list[Path]:
        return [p for p, row in zip(self.paths, self.labels, strict=True) if not row.any()]

    def members(self, name: str) -> list[tuple[Path, float]]:
        """Images counted in category ``name``, most probable first."""
        i = [c.name for c in self.categories].index(name)
        rows = [(p, float(self.probs[j, i])) for j, p in enumerate(self.paths) if self.labels[j, i]]
        return sorted(rows, key=lambda r: -r[1])

    def to_dict(self) -> dict[str, object]:
        rel = lambda p: str(Path(p).relative_to(self.folder))  # noqa: E731
        shot_counts = _tally(s for s, _ in self.shots.values())
        by_category = {c.name: _tally(self.shots[p][0] for p, _ in self.members(c.name) if p in self.shots)
                       for c in self.categories if c.kind == "person"}
        return {
            "encoder": self.encoder, "threshold": self.threshold, "images": len(self.paths),
            "counts": self.counts, "balance": balance(self.counts, self.over_factor),
            "unclassified": [rel(p) for p in self.unclassified],
            "shots": {name.split(":")[0]: shot_counts.get(name.split(":")[0], 0) for name in SHOTS},
            "shots_by_category": by_category,
            "times_of_day": _tally(t for t, _ in self.times.values()),
            "per_image": {rel(p): {"categories": {c.name: round(float(self.probs[j, i]), 3)
                                                  for i, c in enumerate(self.categories) if self.labels[j, i]},
                                   **({"shot": self.shots[p][0]} if p in self.shots else {}),
                                   **({"time": self.times[p][0]} if p in self.times else {})}
                          for j, p in enumerate(self.paths)},
            "problems": {rel(p): why for p, why in self.problems.items()},
        }


def _tally(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def classify_embeddings(folder: Path, paths: list[Path], vectors: np.ndarray, encoder: ImageEncoder,
                        categories: list[Category], threshold: float, over_factor: float = 2.0) -> Composition:
    """Categories (multi-label), then shot type and time of day where they apply."""
    rows, owner = prompt_vectors(encoder, categories)
    probs = zero_shot_probabilities(category_similarity(vectors, rows, owner, len(categories)), encoder.logit_scale)
    labels = multi_labels(probs, threshold)
    result = Composition(folder, encoder.name, threshold, categories, paths, probs, labels, over_factor=over_factor)
    kinds = np.array([c.kind for c in categories])
    person = labels[:, kinds == "person"].any(axis=1) if (kinds == "person").any() else np.ones(len(paths), bool)
    scene = labels[:, kinds == "scene"].any(axis=1)
    result.shots = _single_label(encoder, paths, vectors, person, SHOTS)
    result.times = _single_label(encoder, paths, vectors, scene, TIMES)
    return result


def _single_label(encoder: ImageEncoder, paths: list[Path], vectors: np.ndarray, mask: np.ndarray,
                  lines: list[str]) -> dict[Path, tuple[str, float]]:
    """The most probable of ``lines``' categories for each image where ``mask`` holds."""
    if not mask.any():
        return {}
    cats = parse_categories(lines)
    rows, owner = prompt_vectors(encoder, cats)
    probs = zero_shot_probabilities(category_similarity(vectors[mask], rows, owner, len(cats)), encoder.logit_scale)
    chosen = [p for p, m in zip(paths, mask, strict=True) if m]
    return {p: (cats[int(i)].name, float(row[int(i)])) for p, row, i in zip(chosen, probs, probs.argmax(axis=1),
                                                                           strict=True)}


def categories_for(cfg: CompositionConfig) -> list[Category]:
    return parse_categories(cfg.categories if any(line.strip() for line in cfg.categories)
                            else preset_lines(cfg.preset))


def analyse_composition(folder: str | os.PathLike, cfg: CompositionConfig, encoder: ImageEncoder,
                        cache_dir: str | os.PathLike, progress: bool = True) -> Composition:
    """Classify every image training reads in ``folder``; ``ValueError`` for no images or no categories."""
    from helpers.dataset.embeddings import embed_image_files
    from helpers.dataset.files import dataset_entries

    folder = Path(folder)
    categories = categories_for(cfg)  # bad category lines fail before any model work
    entries, _ = dataset_entries(folder)
    if not entries:
        raise ValueError(f"{folder}: no images to classify (training reads none here); add images first")
    emb = embed_image_files(encoder, [e.path for e in entries], cache_dir, batch_size=cfg.batch_size,
                            progress=progress)
    if not emb.paths:
        raise ValueError(f"{folder}: none of the {len(entries)} images could be read; run the dataset check")
    result = classify_embeddings(folder, emb.paths, emb.vectors, encoder, categories, cfg.threshold, cfg.over_factor)
    result.problems = emb.problems
    return result


# ---------------------------------------------------------------------------------------------- showing
def format_composition(result: Composition) -> str:
    """The counts and what to do about them, as text."""
    data = result.to_dict()
    bal = data["balance"]
    width = max(len(c.name) for c in result.categories)
    lines = [f"composition of {data['images']} images ({result.encoder}; an image counts in every category at "
             f"p >= {result.threshold}):"]
    for name, n in data["counts"].items():
        mark = " missing" if name in bal["missing"] else " over" if name in bal["over"] else \
            " under" if name in bal["under"] else ""
        lines.append(f"  {name:<{width}}  {n:4d}{mark}")
    lines.append(f"mostly balanced: {bal['band'][0]:g} to {bal['band'][1]:g} images each (mean {bal['mean']:g})")
    if bal["missing"]:
        lines.append("missing (add images of these): " + "; ".join(bal["missing"]))
    if bal["over"]:
        lines.append("over-represented (remove some, or add to the others): " +
                     "; ".join(f"{k} {data['counts'][k]}" for k in bal["over"]))
    if data["unclassified"]:
        lines.append(f"unclassified: {len(data['unclassified'])} images had no category at p >= {result.threshold} "
                     "(lower the threshold or add a category for them)")
    shots = data["shots"]
    if sum(shots.values()):
        absent = [k for k, v in shots.items() if not v]
        lines.append("shots (images of people): " + ", ".join(f"{k} {v}" for k, v in shots.items()) +
                     (f"; none {', '.join(absent)}: the guide asks for close-ups, medium and full-length shots"
                      if absent else ""))
    if data["times_of_day"]:
        lines.append("times of day (scenes): " + ", ".join(f"{k} {v}" for k, v in data["times_of_day"].items()))
    for path, why in list(result.problems.items())[:10]:
        lines.append(f"  skipped {path.name}: {why}")
    return "\n".join(lines)


def composition_chart(result: Composition) -> Image.Image:
    """Bars per category, the "mostly balanced" band shaded; missing/over/under bars in orange."""
    from helpers.ui.charts import bar_chart

    counts = result.counts
    bal = balance(counts, result.over_factor)
    flagged = set(bal["missing"]) | set(bal["over"]) | set(bal["under"])
    colours = ["#dd8452" if k in flagged else "#4c72b0" for k in counts]
    return bar_chart(list(counts), list(counts.values()), title=f"{result.folder.name}: images per category (shaded: mostly balanced)",
                     ylabel="images",
                     horizontal=True, band=tuple(bal["band"]), line=bal["mean"], colours=colours)


def shots_chart(result: Composition) -> Image.Image | None:
    from helpers.ui.charts import bar_chart

    shots = result.to_dict()["shots"]
    if not sum(shots.values()):
        return None
    return bar_chart(list(shots), list(shots.values()), title="shot types (images of people)", ylabel="images")


def category_sheet(result: Composition, name: str, limit: int = 24, size: int = 140) -> Image.Image | None:
    """A contact sheet of the images counted in ``name`` with their probability (None when there are none)."""
    from helpers.ui.gallery import thumbnail_grid

    members = result.members(name)[:limit]
    if not members:
        return None
    return thumbnail_grid([(p, f"{p.name}\np={prob:.2f}") for p, prob in members], columns=8, size=size,
                          title=f"{name}: {len(result.members(name))} images")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "category"


def write_composition(result: Composition, out_dir: str | os.PathLike) -> dict[str, str]:
    """composition.json, the charts and one sheet per category into ``out_dir``; returns {what: path}."""
    import json

    from helpers.changes import write_text_atomic

    out = Path(out_dir)
    (out / "sheets").mkdir(parents=True, exist_ok=True)
    written = {"composition numbers": str(write_text_atomic(out / "composition.json",
                                                              json.dumps(result.to_dict(), indent=1)))}
    composition_chart(result).save(out / "composition.png")
    written["composition chart"] = str(out / "composition.png")
    chart = shots_chart(result)
    if chart is not None:
        chart.save(out / "shots.png")
        written["shots chart"] = str(out / "shots.png")
    for c in result.categories:
        sheet = category_sheet(result, c.name)
        if sheet is not None:
            sheet.save(out / "sheets" / f"{slug(c.name)}.png")
    written["category sheets"] = str(out / "sheets")
    return written
