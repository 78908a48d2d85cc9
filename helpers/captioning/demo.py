"""``run_demo(ws)``: tag the demo dataset with the tiny offline tagger and render its ``.txt`` files."""

from __future__ import annotations

from helpers.workspace import Workspace

TINY_TAGGER_NAME = "tiny-tagger"


def ensure_tiny_tagger(ws: Workspace):
    """The tiny tagger in ``ws.models/tiny-tagger`` (built the first time)."""
    from helpers.captioning.tiny_tagger import build_tiny_tagger
    from helpers.captioning.wd_tagger import is_tagger_folder

    folder = ws.model(TINY_TAGGER_NAME)
    if not is_tagger_folder(folder):
        build_tiny_tagger(folder)
    return folder


def run_demo(ws: Workspace) -> dict[str, str]:
    """Tag ``ws.dataset("demo")`` and render "caption, tags" ``.txt`` files (the filename captions are kept)."""
    from helpers.captioning.curation import frequency_chart, tag_frequencies
    from helpers.captioning.sidecar import RenderConfig, load_records
    from helpers.captioning.wd_tagger import TaggerConfig, tag_dataset
    from helpers.dataset import list_images

    folder = ws.dataset("demo")
    if not folder.is_dir() or not list_images(folder):
        from helpers.captions import captions_from_filenames, write_captions
        from helpers.dataset import make_demo_dataset

        make_demo_dataset(folder)  # the dataset stage did not run: make its output here
        write_captions(captions_from_filenames(list_images(folder)))
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
