"""XY(Z) grids: images over two or three settings (A1111's X/Y/Z plot), labelled, each cell also its own PNG.

Owns ``Axis`` (``parse_axis("cfg=4,7,10")``), the cell plan and ``render_grid``. Axes: ``prompt`` (kohya-syntax
lines, so a prompt can carry its own size/seed), ``checkpoint`` (model files, run folders, training states, or
LoRA files: a LoRA there is applied to the base model; ``base`` = the model itself), ``strength`` (LoRA
strength, 0 = the base model), ``cfg``, ``sampler``, ``steps``, ``seed``. A third axis makes pages.

Cells are generated model by model (a model is loaded once and freed before the next), LoRA set by LoRA set,
and in batches of cells that share their sampling settings. Every image is written as it is made, with its
A1111 parameters; the grid pages and ``grid.json`` (axes, labels, each cell's files) are written at the end.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from helpers.changes import write_text_atomic
from helpers.generation.loras import LoraSpec
from helpers.generation.pipeline import GeneratedImage, ImageSettings
from helpers.generation.prompts import PromptSpec, parse_prompt_line
from helpers.generation.samplers import find_sampler

AXIS_NAMES = {"prompt": "prompt", "checkpoint": "checkpoint", "strength": "LoRA strength", "cfg": "CFG scale",
              "sampler": "sampler", "steps": "steps", "seed": "seed"}
_ALIASES = {"prompts": "prompt", "epoch": "checkpoint", "epochs": "checkpoint", "model": "checkpoint",
            "checkpoints": "checkpoint", "lora": "strength", "weight": "strength", "cfg_scale": "cfg",
            "scale": "cfg", "step": "steps", "seeds": "seed", "samplers": "sampler"}


class GridError(ValueError):
    """An axis or grid request that cannot be made; the message says how to write it."""


@dataclass
class Axis:
    """One grid axis: its kind, typed values and the label drawn for each."""

    kind: str
    values: list
    labels: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return AXIS_NAMES[self.kind]


def _is_lora_file(path: Path) -> bool:
    from helpers.models.checkpoint import read_safetensors_header

    if not (path.is_file() and path.suffix == ".safetensors"):
        return False
    header, _ = read_safetensors_header(path)
    return any(k.startswith(("lora_", "lycoris_")) for k in header)


def checkpoint_label(value: str) -> str:
    """"epoch 3" / "step 1200" for our checkpoint names, else the file or folder name."""
    if value == "base":
        return "base model"
    stem = Path(value).stem if Path(value).suffix else Path(value).name
    epoch, step = re.search(r"-e(\d+)(?:-r\d+)?$", stem), re.search(r"-s(\d+)(?:-r\d+)?$", stem)
    return f"epoch {int(epoch.group(1))}" if epoch else f"step {int(step.group(1))}" if step else stem


def _range(text: str) -> list[int] | None:
    """A1111 integer ranges: ``1-4`` -> 1,2,3,4 (and ``1-9 (+2)`` -> 1,3,…,9)."""
    m = re.fullmatch(r"\s*(-?\d+)\s*-\s*(-?\d+)\s*(?:\(\+(\d+)\))?\s*", text)
    if not m:
        return None
    a, b, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
    return list(range(a, b + 1, step))


def make_axis(kind: str, raw: list) -> Axis:
    """An axis from raw values (strings or numbers); bad values name the axis and the value."""
    kind = _ALIASES.get(kind.strip().lower().replace(" ", "_"), kind.strip().lower())
    if kind not in AXIS_NAMES:
        raise GridError(f"unknown axis {kind!r}; axes: {', '.join(AXIS_NAMES)}")
    if not raw:
        raise GridError(f"axis {kind}: no values")
    try:
        if kind == "prompt":
            values = [v if isinstance(v, PromptSpec) else parse_prompt_line(str(v), where=f"axis prompt, value {i + 1}")
                      for i, v in enumerate(raw)]
            labels = [v.prompt for v in values]
        elif kind == "checkpoint":
            values = [str(v).strip() for v in raw]
            labels = [checkpoint_label(v) for v in values]
        elif kind in ("strength", "cfg"):
            values = [float(v) for v in raw]
            labels = [(f"LoRA {v:g}" + (" (base)" if v == 0 else "")) if kind == "strength" else f"CFG {v:g}"
                      for v in values]
        elif kind == "sampler":
            values = [find_sampler(str(v)).name for v in raw]
            labels = list(values)
        else:
            values = [int(v) for v in raw]
            if kind == "steps" and min(values) < 1:
                raise ValueError("steps must be at least 1")
            labels = [f"{v} steps" if kind == "steps" else f"seed {v}" for v in values]
    except ValueError as exc:
        raise GridError(f"axis {kind}: {exc}") from None
    return Axis(kind, values, labels)


def parse_axis(text: str) -> Axis:
    """``kind=v1,v2,…`` (CSV: quote values holding commas), ``kind=@file.txt`` (one value per line), ``seed=1-4``."""
    kind, sep, rest = text.partition("=")
    if not sep:
        raise GridError(f"axis {text!r}: write it as kind=value1,value2 (kinds: {', '.join(AXIS_NAMES)})")
    rest = rest.strip()
    if rest.startswith("@"):
        path = Path(rest[1:]).expanduser()
        if not path.is_file():
            raise GridError(f"axis {kind}: no such file {path}")
        raw = [line for line in path.read_text(encoding="utf-8-sig").splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    else:
        ranged = _range(rest) if kind.strip().lower() in ("seed", "seeds", "steps", "step") else None
        raw = ranged if ranged is not None else [v.strip() for v in next(csv.reader([rest], skipinitialspace=True))
                                                 if v.strip()]
    return make_axis(kind, raw)


# ---------------------------------------------------------------- the plan


@dataclass
class Cell:
    """One grid cell: its place, its settings, the model and the LoRA files (with strengths) it uses."""

    page: int
    row: int
    column: int
    settings: ImageSettings
    model: str  # model source
    loras: tuple[LoraSpec, ...] = ()
    images: list[GeneratedImage] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def lora_key(self) -> tuple[str, ...]:
        return tuple(str(s.path) for s in self.loras)

    @property
    def sampling_key(self) -> tuple:
        s = self.settings
        return s.steps, s.cfg, s.sampler, s.width, s.height, s.clip_skip, s.rescale_cfg


def _set(cell: Cell, axis: Axis, value, lora_axis: bool, fixed: list[LoraSpec]) -> Cell:
    s = cell.settings
    if axis.kind == "prompt":
        cell.settings = replace(s, **value.overrides())
    elif axis.kind in ("cfg", "sampler", "steps", "seed"):
        cell.settings = replace(s, **{axis.kind: value})
    elif axis.kind == "checkpoint":
        if value != "base" and _is_lora_file(Path(value)):
            cell.loras = (LoraSpec(Path(value), 1.0), *cell.loras)
        elif value != "base":
            cell.model = value
    elif axis.kind == "strength":
        if lora_axis:  # the LoRA files on the checkpoint axis take the strength; fixed ones keep theirs
            cell.loras = tuple(LoraSpec(sp.path, value) if sp not in fixed else sp for sp in cell.loras)
        else:
            cell.loras = tuple(LoraSpec(sp.path, value) for sp in cell.loras)
    return cell


def plan_cells(axes: list[Axis], base: ImageSettings, model: str, loras: list[LoraSpec]) -> list[Cell]:
    """Every cell of the grid (x = axes[0], y = axes[1], pages = axes[2]), settings filled in."""
    if not 1 <= len(axes) <= 3:
        raise GridError(f"a grid has 1 to 3 axes (x, y, pages), got {len(axes)}")
    kinds = [a.kind for a in axes]
    if len(set(kinds)) != len(kinds):
        raise GridError(f"each axis kind may appear once, got {', '.join(kinds)}")
    lora_axis = "checkpoint" in kinds and any(
        v != "base" and _is_lora_file(Path(v)) for v in axes[kinds.index("checkpoint")].values)
    if "strength" in kinds and not loras and not lora_axis:
        raise GridError("a LoRA strength axis needs a LoRA: pass loras (command line: --lora FILE) or put LoRA files "
                        "on the checkpoint axis")
    x = axes[0]
    y = axes[1] if len(axes) > 1 else Axis("seed", [None], [""])  # one unlabelled row
    z = axes[2] if len(axes) > 2 else Axis("seed", [None], [""])  # one page
    order = sorted(axes, key=lambda a: a.kind != "checkpoint")  # the model first: the strength axis sees its LoRAs
    cells = []
    for p in range(len(z.values)):
        for r in range(len(y.values)):
            for c in range(len(x.values)):
                cell = Cell(p, r, c, base, model, tuple(loras))
                where = {id(x): c, id(y): r, id(z): p}
                for axis in order:
                    cell = _set(cell, axis, axis.values[where[id(axis)]], lora_axis, loras)
                cells.append(cell)
    return cells


# ---------------------------------------------------------------- making it


@dataclass
class GridResult:
    """What ``render_grid`` wrote."""

    folder: Path
    pages: list[Path]
    cells: list[Cell]
    manifest: Path


def _groups(cells: list[Cell], batch_limit: int):
    """Cells in generation order: by model, LoRA files, strengths, then batches sharing sampling settings."""
    def order(c: Cell):
        return (models.index(c.model), c.lora_key, tuple(s.strength for s in c.loras), c.sampling_key)

    models = list(dict.fromkeys(c.model for c in cells))
    ordered = sorted(cells, key=order)
    batch: list[Cell] = []
    for cell in ordered:
        if batch and (order(batch[0]) != order(cell) or
                      (len(batch) + 1) * cell.settings.batch_size > max(batch_limit, cell.settings.batch_size)):
            yield batch
            batch = []
        batch.append(cell)
    if batch:
        yield batch


def _clear_previous(folder: Path, overwrite: bool) -> None:
    """Refuse to mix with an earlier grid unless asked; then remove only the files a grid writes."""
    earlier = [p for p in [*folder.glob("grid*.png"), folder / "grid.json", *folder.glob("cells/*.png")] if p.exists()]
    if earlier and not overwrite:
        raise FileExistsError(f"{folder} already holds a grid ({len(earlier)} files): choose another folder or pass "
                              "overwrite=True (command line: --overwrite)")
    for path in earlier:
        path.unlink()


def render_cells(cells: list[Cell], folder: Path, *, open_model, batch_limit: int = 4, progress: bool = True) -> None:
    """Generate every cell (model by model, freeing each before the next) and write each image as a PNG."""
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(c.settings.batch_size for c in cells), unit="img", desc="grid", disable=not progress)
    generator, current, lora_key = None, None, None
    try:
        for batch in _groups(cells, batch_limit):
            first = batch[0]
            if first.model != current:
                if generator is not None:
                    generator.close()
                generator, current, lora_key = None, first.model, None
                generator = open_model(first.model)
            if first.lora_key != lora_key:
                generator.apply_loras(list(first.loras))
                lora_key = first.lora_key
            elif first.loras:
                generator.loras.set_strengths([s.strength for s in first.loras])
            items = [generator.resolve(c.settings) for c in batch]
            singles = [replace(i, seed=i.seed + k, batch_size=1) for i in items for k in range(i.batch_size)]
            images = generator.generate_together(singles)
            for cell in batch:
                cell.images, images = images[: cell.settings.batch_size], images[cell.settings.batch_size:]
                stem = f"p{cell.page + 1:02d}-" if len({c.page for c in cells}) > 1 else ""
                stem += f"y{cell.row + 1:02d}-x{cell.column + 1:02d}"
                for k, img in enumerate(cell.images):
                    name = f"{stem}-{k + 1}.png" if len(cell.images) > 1 else f"{stem}.png"
                    cell.files.append(img.save(folder / "cells" / name))
                bar.update(len(cell.images))
    finally:
        bar.close()
        if generator is not None:
            generator.close()


def draw_pages(cells: list[Cell], axes: list[Axis], folder: Path, *, reference: list | None = None,
               cell_size: int | None = None) -> list[Path]:
    """One labelled grid PNG per page (x across, y down); ``reference`` images form an extra first column."""
    from helpers.generation.parameters import save_png
    from helpers.ui.gallery import labelled_grid, tile_images

    x = axes[0]
    y_labels = axes[1].labels if len(axes) > 1 else [""]
    pages = sorted({c.page for c in cells})
    out = []
    for page in pages:
        grid = [[None] * len(x.values) for _ in y_labels]
        for c in cells:
            if c.page == page and c.images:
                grid[c.row][c.column] = tile_images([i.image for i in c.images])
        columns = list(x.labels)
        size = cell_size or max(max(img.size) for row in grid for img in row if img is not None)
        if reference is not None:  # fitted to the generated cells, not the other way round
            grid = [[ref, *row] for ref, row in zip(reference, grid, strict=True)]
            columns = ["training image", *columns]
        title = f"x: {x.title}" + (f" · y: {axes[1].title}" if len(axes) > 1 else "")
        if len(axes) > 2:
            title += f" · page {page + 1}/{len(pages)}: {axes[2].labels[page]}"
        sheet = labelled_grid(grid, columns, y_labels, title=title, cell_size=size)
        first = next(c for c in cells if c.page == page and c.images)
        name = f"grid-page{page + 1:02d}.png" if len(pages) > 1 else "grid.png"
        out.append(save_png(sheet, folder / name, first.images[0].infotext))
    return out


def render_grid(model: str | Path, axes: list[Axis], folder: str | Path, *, base: ImageSettings | None = None,
                loras: list[LoraSpec] = (), open_model=None, batch_limit: int = 4, overwrite: bool = False,
                progress: bool = True, reference: list | None = None, cell_size: int | None = None) -> GridResult:
    """Make a grid of ``model`` over ``axes`` into ``folder`` (``cells/*.png``, ``grid[-pageN].png``, ``grid.json``).

    ``open_model(source) -> ImageGenerator`` loads a model (default: ``open_generator`` with default settings).
    A random base seed (-1) is drawn once, so every cell of the grid shares it unless a seed axis varies it.
    """
    from helpers.generation.pipeline import open_generator, random_seed

    base = base or ImageSettings()
    if base.seed < 0:
        base = replace(base, seed=random_seed())
    if not base.prompt and "prompt" not in [a.kind for a in axes]:
        raise GridError("give a prompt (base settings) or a prompt axis")
    folder = Path(folder)
    _clear_previous(folder, overwrite)
    cells = plan_cells(list(axes), base, str(model), list(loras))
    render_cells(cells, folder, open_model=open_model or (lambda src: open_generator(src, batch_size=batch_limit)),
                 batch_limit=batch_limit, progress=progress)
    pages = draw_pages(cells, list(axes), folder, reference=reference, cell_size=cell_size)
    manifest = {"model": str(model), "loras": [{"file": str(s.path), "strength": s.strength} for s in loras],
                "axes": [{"kind": a.kind, "labels": a.labels} for a in axes], "pages": [p.name for p in pages],
                "cells": [{"page": c.page, "row": c.row, "column": c.column, "model": c.model,
                           "loras": [{"file": str(s.path), "strength": s.strength} for s in c.loras],
                           "files": [str(f.relative_to(folder)) for f in c.files],
                           "parameters": [i.infotext for i in c.images]} for c in cells]}
    path = write_text_atomic(folder / "grid.json", json.dumps(manifest, indent=1))
    return GridResult(folder, pages, cells, path)
