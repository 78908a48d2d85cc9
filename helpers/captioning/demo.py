"""The demo's caption steps: captions from the demo images' filenames (notebook 02), the tiny offline tagger's tags
rendered into the ``.txt`` files (notebook 03), then the trigger-word check with the tiny base model."""

from __future__ import annotations

from helpers.captioning.curation import frequency_chart, tag_frequencies
from helpers.captioning.filenames import captions_from_filenames
from helpers.captioning.sidecar import RenderConfig, load_records
from helpers.captioning.tiny_tagger import build_tiny_tagger
from helpers.captioning.triggers import TriggerCheckConfig, format_trigger_reports, run_trigger_check
from helpers.captioning.wd_tagger import TaggerConfig, is_tagger_folder, tag_dataset
from helpers.dataset.caption_files import write_captions
from helpers.dataset.demo import make_demo_dataset
from helpers.dataset.files import list_images
from helpers.dataset.report import advice_dir
from helpers.workspace import Workspace

TINY_TAGGER_NAME = "tiny-tagger"


def ensure_tiny_tagger(ws: Workspace):
    """The tiny tagger in ``ws.models/tiny-tagger`` (built the first time)."""
    folder = ws.model(TINY_TAGGER_NAME)
    if not is_tagger_folder(folder):
        build_tiny_tagger(folder)
    return folder


def captions_from_filenames_step(ws: Workspace) -> dict[str, str]:
    """The guide's filename -> ``.txt`` step on ``ws.dataset("demo")`` (made here if the dataset step did not run)."""
    folder = ws.dataset("demo")
    if not folder.is_dir() or not list_images(folder):
        make_demo_dataset(folder)
    changes = write_captions(captions_from_filenames(list_images(folder)))
    return {"captions from filenames": f"{len(changes.created)} new .txt files in {folder}"
                                      + (f" (undo: python -m helpers.captioning undo {changes.backup_dir})"
                                         if changes.backup_dir else "")}


def run_demo(ws: Workspace) -> dict[str, str]:
    """Tag ``ws.dataset("demo")`` and render "caption, tags" ``.txt`` files (the filename captions are kept)."""
    folder = ws.dataset("demo")
    if not folder.is_dir() or not list_images(folder):
        captions_from_filenames_step(ws)
    tagger = ensure_tiny_tagger(ws)
    report = tag_dataset(folder, TaggerConfig(model=str(tagger)), ws.models, render=RenderConfig(), progress=False)
    records, _ = load_records(list_images(folder))
    chart = ws.cache / "captioning" / "demo-tag-frequency.png"
    chart.parent.mkdir(parents=True, exist_ok=True)
    frequency_chart(tag_frequencies(records), title="demo dataset tags").save(chart)
    out = {"tiny tagger": str(tagger),
           "tagged images (.captions.json + .txt)": f"{folder} ({report.tagged} tagged, {report.skipped} skipped, "
                                                   f"{report.images_per_second:.0f} images/s)",
           "tag frequency chart": str(chart)}
    if report.edit is not None and report.edit.backup_dirs:
        out["undo with"] = "python -m helpers.captioning undo " + " ".join(str(d) for d in report.edit.backup_dirs)
    return out


def trigger_check_step(ws: Workspace) -> dict[str, str]:
    """Check two triggers on the demo captions with the tiny SDXL base model's tokenizers: "circle" (a word the
    captions use) and "zkps" (in none of them), so both kinds of verdict show."""
    folder = ws.dataset("demo")
    if not folder.is_dir() or not list_images(folder):
        captions_from_filenames_step(ws)
    if not (ws.models / "tiny-sdxl").exists():  # this step run on its own: the base model step did not run
        from helpers.models.tiny import save_tiny_model

        save_tiny_model(ws.model("tiny-sdxl"), "sdxl")
    cfg = TriggerCheckConfig(triggers=["circle", "zkps"], known=["red"], model="tiny-sdxl")
    reports, path = run_trigger_check(folder, cfg, ws.models, advice_dir(ws.cache, folder))
    return {"trigger check": "; ".join(f"{r.trigger} {r.verdict}" for r in reports) + f" ({path})",
            "trigger verdicts": format_trigger_reports(reports).splitlines()[0]}
