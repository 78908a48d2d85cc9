"""What notebook 03's cells call: pick the dataset, run each captioning step, and show the results as pictures.

Each function takes the values it uses, copes with "no dataset yet" or "model not available" by printing a clear
message (so a notebook run top to bottom never stops half way), and returns the step's report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from helpers import ledger
from helpers.captioning import booru, captioners, curation, sidecar, triggers, wd_tagger
from helpers.captioning.sidecar import RenderConfig
from helpers.config import option
from helpers.dataset.caption_files import CaptionError, format_preview, read_caption
from helpers.dataset.files import list_images
from helpers.dataset.report import advice_dir
from helpers.models.encoders import is_image_text_encoder
from helpers.ui.errors import stage_failed
from helpers.workspace import Workspace


@dataclass
class CaptionTarget:
    """Which dataset notebook 03 works on, and how its ``.txt`` captions are written."""

    format_version: ClassVar[int] = 1

    dataset: str = option("", help="dataset folder name in the workspace (empty: the first one)")
    render: RenderConfig = option(factory=RenderConfig, help="how each image's .txt is written from its record")


def default_target(ws: Workspace) -> CaptionTarget:
    """The first dataset of the workspace, "demo" last (a real project's data comes first)."""
    names = sorted(ws.list_datasets(), key=lambda n: (n == "demo", n))
    return CaptionTarget(dataset=names[0] if names else "")


def choose_dataset(ws: Workspace, name: str) -> Path | None:
    """The dataset folder, or None with a message saying how to get one."""
    names = ws.list_datasets()
    name = name or (names[0] if names else "")
    if not name:
        print(f"No dataset in {ws.datasets} yet: run notebook 01 (download) first, or copy a folder of images "
              "there.")
        return None
    folder = ws.dataset(name)
    if not folder.is_dir():
        print(f"No dataset {name!r} in {ws.datasets}; there are: {', '.join(names) or 'none'}.")
        return None
    count = len(list_images(folder))
    if not count:
        print(f"dataset {name} has no images ({folder}): add some, or pick another dataset.")
        return None
    print(f"dataset {name}: {count} images in {folder}")
    return folder


def local_taggers(models_dir: Path) -> list[str]:
    return sorted(p.name for p in models_dir.iterdir() if p.is_dir() and wd_tagger.is_tagger_folder(p)) \
        if models_dir.is_dir() else []


def default_tagger_config(ws: Workspace) -> wd_tagger.TaggerConfig:
    """Tagger settings with a tagger already in the workspace preselected (the default one if it is there)."""
    have = local_taggers(ws.models)
    default = wd_tagger.tagger_folder_name(wd_tagger.DEFAULT_TAGGER)
    if not have or default in have:
        return wd_tagger.TaggerConfig()
    return wd_tagger.TaggerConfig(model=have[0])


def local_captioners(models_dir: Path) -> list[str]:
    found = []
    for p in sorted(models_dir.iterdir()) if models_dir.is_dir() else []:
        if (p / "config.json").is_file() and any(p.glob("*.safetensors")) and not is_image_text_encoder(p):
            try:
                captioners.resolve_captioner(str(p))
            except captioners.CaptionerError:
                continue
            if any((p / f).is_file() for f in ("processor_config.json", "preprocessor_config.json")):
                found.append(p.name)
    return found


def default_captioner_config(ws: Workspace) -> captioners.CaptionerConfig:
    """Captioner settings with a captioner copied into the workspace's models preselected, if there is one."""
    have = local_captioners(ws.models)
    return captioners.CaptionerConfig(model=str(ws.models / have[0])) if have else captioners.CaptionerConfig()


def show_problems(problems: dict[Path, str], limit: int = 20) -> None:
    for path, why in list(problems.items())[:limit]:
        print(f"  ! {path.name}: {why}")
    if len(problems) > limit:
        print(f"  ... and {len(problems) - limit} more")


def run_tagger(ws: Workspace, folder: Path | None, cfg: wd_tagger.TaggerConfig,
               render: RenderConfig) -> wd_tagger.TaggingReport | None:
    """Tag ``folder`` (fetching the tagger into the workspace the first time); prints what happened."""
    if folder is None:
        return None
    try:
        with ledger.stage(ws.root, "captioning", detail=f"tagger {cfg.model}"):  # paid time (helpers.ledger)
            report = wd_tagger.tag_dataset(folder, cfg, ws.models, render)
    except wd_tagger.TaggerError as exc:
        stage_failed(f"Tagger not run: {exc}")
        return None
    print(", ".join(f"{k}: {v}" for k, v in report.summary().items()))
    show_problems(report.problems)
    return report


def run_captioner(ws: Workspace, folder: Path | None, cfg: captioners.CaptionerConfig,
                  render: RenderConfig) -> captioners.CaptioningReport | None:
    """Show the VRAM estimate, then caption ``folder``; a model that cannot be loaded is a message, not a crash."""
    if folder is None:
        return None
    try:
        print(captioners.describe_vram(cfg.model, cfg.batch_size, cfg.dtype, cfg.device))
        with ledger.stage(ws.root, "captioning", detail=f"captioner {cfg.model}"):
            report = captioners.caption_dataset(folder, cfg, ws.hf_cache, render)
    except captioners.CaptionerError as exc:
        stage_failed(f"Captioner not run: {exc}")
        return None
    print(", ".join(f"{k}: {v}" for k, v in report.summary().items()))
    show_problems(report.problems)
    return report


def run_booru(folder: Path | None, cfg: booru.BooruConfig, render: RenderConfig) -> booru.BooruReport | None:
    """Booru captions for images that have gallery-dl metadata beside them."""
    if folder is None:
        return None
    report = booru.caption_dataset_from_metadata(folder, cfg, render)
    if not report.captioned:
        print(f"No gallery-dl metadata (NAME.EXT.json) beside the images of {folder.name}: nothing to do. Download "
              "with gallery-dl --write-metadata (notebook 01) to use booru captions.")
        return report
    print(", ".join(f"{k}: {v}" for k, v in report.summary().items()))
    show_problems(report.problems)
    return report


def plan_curation(folder: Path | None, cfg: curation.CurationConfig,
                  render: RenderConfig) -> dict[Path, sidecar.CaptionRecord]:
    """The records the curation would change, with a preview of the ``.txt`` changes printed; writes nothing."""
    if folder is None:
        return {}
    records, problems = sidecar.load_records(list_images(folder))
    planned = curation.curate_records(records, cfg)
    print(format_preview(sidecar.preview_edit(planned, render), limit=15) if planned else "no changes")
    show_problems(problems)
    return planned


def apply_curation(planned: dict[Path, sidecar.CaptionRecord], render: RenderConfig) -> sidecar.EditResult | None:
    """Write the planned records and ``.txt`` files; prints the undo command."""
    if not planned:
        print("nothing to write")
        return None
    edit = sidecar.apply_edit(planned, render)
    print(f"changed {len(planned)} image(s); undo with: python -m helpers.captioning undo "
          + " ".join(str(d) for d in edit.backup_dirs))
    show_problems(edit.problems)
    return edit


def caption_sheet(folder: Path | None, limit: int = 18, columns: int = 6, size: int = 160):
    """A contact sheet of the first images with their current ``.txt`` caption under each (or None)."""
    from helpers.ui.gallery import thumbnail_grid

    if folder is None:
        return None
    items = []
    for image in list_images(folder)[:limit]:
        try:
            text = read_caption(image) or "(no caption)"
        except CaptionError:
            text = "(caption not UTF-8)"
        items.append((image, text))
    return thumbnail_grid(items, columns=columns, size=size, caption_lines=4, title=f"{folder.name}: captions")


def tag_chart(folder: Path | None, top: int = 30):
    """Bar chart of the dataset's most common tags (or None when there are none)."""
    if folder is None:
        return None
    records, _ = sidecar.load_records(list_images(folder))
    freqs = curation.tag_frequencies(records)
    if not freqs:
        print("no tags yet")
        return None
    return curation.frequency_chart(freqs, top=top, title=f"{folder.name}: {len(freqs)} distinct tags")



def default_trigger_config(ws: Workspace, folder: Path | None = None) -> triggers.TriggerCheckConfig:
    """The last trigger check of ``folder`` (its ``triggers.json``), else the workspace's first base model (a
    folder with a model.json or a diffusers model_index.json) and no trigger yet."""
    import json

    saved = advice_dir(ws.cache, folder) / "triggers.json" if folder is not None else None
    if saved is not None and saved.is_file():
        data = json.loads(saved.read_text(encoding="utf-8"))
        return triggers.TriggerCheckConfig(triggers=data["checked"], known=data["known"], model=data["model"],
                                           max_tokens=data["max_tokens"])
    names = [p.name for p in sorted(ws.models.iterdir()) if (p / "model.json").is_file()
             or (p / "model_index.json").is_file()] if ws.models.is_dir() else []
    return triggers.TriggerCheckConfig(model=names[0] if names else "")


def check_triggers(ws: Workspace, folder: Path | None, cfg: triggers.TriggerCheckConfig):
    """The trigger verdicts for ``folder``'s training captions, printed; saved to the dataset's advice folder."""
    if folder is None:
        return None
    try:
        reports, path = triggers.run_trigger_check(folder, cfg, ws.models, advice_dir(ws.cache, folder))
    except ValueError as exc:  # no trigger, a trigger too long, no model / model not found (CheckpointError)
        stage_failed(f"trigger check not run: {exc}")
        return None
    print(triggers.format_trigger_reports(reports))
    print(f"saved: {path}")
    return reports
