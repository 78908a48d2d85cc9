"""``python -m helpers.captioning`` commands and the demo hook, on the tiny tagger and the demo dataset."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers.captioning.__main__ import main
from helpers.captioning.demo import run_demo
from helpers.captioning.sidecar import load_record
from helpers.dataset.caption_files import caption_path, read_caption
from helpers.dataset.files import list_images


def test_run_demo_tags_the_demo_dataset_and_keeps_filename_captions(workspace):
    out = run_demo(workspace)
    folder = workspace.dataset("demo")
    images = list_images(folder)
    assert images and (workspace.models / "tiny-tagger" / "model.onnx").is_file()
    for image in images:
        record = load_record(image)
        assert record.tags and record.sources["tags"] == "tunebook/tiny-tagger"
        original = record.captions["original"]  # the filename caption, kept apart from the tags
        assert read_caption(image).startswith(original + ", ")
    assert "12 tagged" in out["tagged images (.captions.json + .txt)"]
    again = run_demo(workspace)  # a second run changes nothing
    assert "0 tagged, 12 skipped" in again["tagged images (.captions.json + .txt)"]


def test_cli_tag_curate_render_tags_undo(workspace, capsys):
    run_demo(workspace)
    folder = workspace.dataset("demo")
    image = list_images(folder)[0]
    before = read_caption(image)
    tagger = str(workspace.models / "tiny-tagger")
    assert main(["--workspace", str(workspace.root), "--json", "tag", str(folder), "--model", tagger, "--force",
                 "--rating-tag", "last", "--render", "tags"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tagged"] == 12 and report["problems"] == 0 and len(report["undo"]) == 2
    assert read_caption(image).endswith(", general") and not read_caption(image).startswith(before)
    assert main(["--workspace", str(workspace.root), "curate", str(folder), "--trigger", "zkx", "--dry-run"]) == 0
    assert "zkx" in capsys.readouterr().out and "zkx" not in read_caption(image)
    assert main(["--workspace", str(workspace.root), "--json", "curate", str(folder), "--remove", "general",
                 "--trigger", "zkx", "--render", "tags"]) == 0
    edit = json.loads(capsys.readouterr().out)
    assert read_caption(image).startswith("zkx, ") and "general" not in read_caption(image)
    assert main(["tags", str(folder), "--top", "3", "--chart", str(workspace.cache / "tags.png")]) == 0
    assert "    12  zkx" in capsys.readouterr().out and (workspace.cache / "tags.png").is_file()
    assert main(["undo", *edit["undo"]]) == 0
    assert read_caption(image).endswith(", general")
    assert main(["render", str(folder), "--render", "caption, tags"]) == 0
    assert read_caption(image).startswith(before.split(",")[0])


def test_cli_bad_input_exits_2_with_a_message(tmp_path, capsys):
    assert main(["tag", str(tmp_path / "missing")]) == 2
    assert "no such dataset folder" in capsys.readouterr().err
    (tmp_path / "ds").mkdir()
    assert main(["--workspace", str(tmp_path / "ws"), "tag", str(tmp_path / "ds"), "--model", "nonsense"]) == 2
    assert "unknown tagger 'nonsense'" in capsys.readouterr().err
    assert main(["curate", str(tmp_path / "ds"), "--replace", "no arrow"]) == 2
    assert "old tag -> new tag" in capsys.readouterr().err


def test_cli_help_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "helpers.captioning", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "tag" in done.stdout and "booru" in done.stdout
    assert not caption_path(__file__).exists()


def test_notebook_helpers_cope_with_empty_workspaces_and_preselect_local_models(workspace, capsys):
    from helpers.captioning import notebook
    from helpers.captioning.curation import CurationConfig
    from helpers.captioning.sidecar import RenderConfig

    assert notebook.default_target(workspace).dataset == ""
    assert notebook.choose_dataset(workspace, "") is None
    assert "No dataset in" in capsys.readouterr().out
    assert notebook.run_tagger(workspace, None, notebook.default_tagger_config(workspace), RenderConfig()) is None
    assert notebook.caption_sheet(None) is None and notebook.plan_curation(None, CurationConfig(), RenderConfig()) == {}
    assert notebook.default_tagger_config(workspace).model == "eva02-large-v3"
    run_demo(workspace)
    assert notebook.default_tagger_config(workspace).model == "tiny-tagger"  # the tagger already in the workspace
    folder = notebook.choose_dataset(workspace, notebook.default_target(workspace).dataset)
    assert folder == workspace.dataset("demo")
    planned = notebook.plan_curation(folder, CurationConfig(trigger="zkx"), RenderConfig())
    assert len(planned) == 12 and "zkx" in capsys.readouterr().out
    edit = notebook.apply_curation(planned, RenderConfig())
    assert edit is not None and "undo with: python -m helpers.captioning undo" in capsys.readouterr().out
    assert notebook.caption_sheet(folder).size[0] > 0 and notebook.tag_chart(folder) is not None


def test_every_captioning_config_round_trips_through_its_form_and_toml(tmp_path):
    import dataclasses

    from helpers.captioning import booru, captioners, curation, notebook, sidecar, wd_tagger
    from helpers.config import load_config, save_config, validate
    from helpers.ui.forms import config_form

    changed = [wd_tagger.TaggerConfig(general_threshold=0.5, undesired_tags=["text"], rating_tag="last"),
               captioners.CaptionerConfig(model="blip-large", batch_size=4),
               booru.BooruConfig(quality="aesthetic", percentiles="dataset"),
               curation.CurationConfig(trigger="ewpp", trigger_position="before_class", class_word="woman"),
               notebook.CaptionTarget(dataset="demo", render=sidecar.RenderConfig(format="tags", keep_separator=True))]
    for cfg in changed:
        assert validate(cfg) == {}
        form = config_form(type(cfg), value=cfg)
        assert form.value == cfg
        path = save_config(cfg, tmp_path / f"{type(cfg).__name__}.toml")
        assert load_config(type(cfg), path) == cfg
    bad = dataclasses.replace(wd_tagger.TaggerConfig(), general_threshold=1.5)
    assert "general_threshold" in validate(bad)
