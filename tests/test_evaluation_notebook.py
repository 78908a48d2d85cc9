"""Notebook 06's glue (``helpers.evaluation.notebook``): what its forms start from, and each step's wrapper: a
result with its one-line summary, or a message instead of a traceback; the upload with the token notebook 00
saved (never printed), nothing uploaded while the repo is empty."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from helpers.evaluation import notebook
from helpers.evaluation.demo import demo_settings
from tests.hub_standin import HubStandIn
from tests.test_evaluation_run import copy_demo

TOKEN = "hf_notebookTOKEN1234567890"


def form(value):
    """What a config form offers the wrappers: ``.value``."""
    return SimpleNamespace(value=value)


@pytest.fixture(scope="module")
def ws(demo_workspace, tmp_path_factory):
    return copy_demo(demo_workspace, tmp_path_factory.mktemp("nb06") / "ws")


@pytest.fixture(scope="module")
def evaluated(ws):
    settings = demo_settings(ws, checkpoints=["epoch 2"], strengths=[0.0, 1.0], prompt_sets=["new"],
                             preservation_prompts=0, images_per_prompt=1)
    return notebook.run_evaluation(ws, form(notebook.RunChoice(run="demo")), form(settings))


def test_the_forms_start_from_the_newest_run_and_the_encoders_in_models(ws, tmp_path):
    assert notebook.suggest_choice(ws).run == "demo"
    assert "demo: " in notebook.describe_runs(ws) and "demo.safetensors" in notebook.describe_runs(ws)
    newer = ws.run("newer").create()
    shutil.copy(ws.run("demo").checkpoints / "demo.safetensors", newer.checkpoints / "newer.safetensors")
    ws.run("empty").create()  # no model file: not offered
    try:
        assert notebook.runs_with_checkpoints(ws)[:2] == ["newer", "demo"]
    finally:
        shutil.rmtree(newer.root), shutil.rmtree(ws.run("empty").root)
    quick, full = notebook.suggest_settings(ws, gpu=False), notebook.suggest_settings(ws, gpu=True)
    assert quick.encoder_path == str(ws.models / "tiny-clip") and quick.dino_path == str(ws.models / "tiny-dino")
    assert quick.device == "cpu" and quick.steps < full.steps and quick.images_per_prompt <= full.images_per_prompt
    assert full.device == "auto" and full.encoder_path == quick.encoder_path
    from helpers.workspace import Workspace

    bare = Workspace.open(tmp_path / "bare")
    assert notebook.suggest_settings(bare, gpu=True).encoder_path == ""  # nothing local: the default is fetched
    assert "no training run" in notebook.describe_runs(bare) and notebook.suggest_choice(bare).run == ""


def test_evaluate_shows_the_recommendation_and_the_report(evaluated, capsys):
    assert evaluated is not None and evaluated.report_path.is_file()
    capsys.readouterr()
    notebook.show_report(evaluated)
    shown = capsys.readouterr().out
    assert str(evaluated.report_path) in shown and "opens offline" in shown
    table = notebook.metrics_table_html(evaluated)
    assert table.count("<tr") == len(evaluated.metrics) + 1 and "<tr style='font-weight:bold'>" in table


def test_a_problem_is_a_message_not_a_traceback(ws, capsys):
    from helpers.evaluation import EvalSettings

    assert notebook.run_evaluation(ws, form(notebook.RunChoice(run="no-such-run")), form(EvalSettings())) is None
    err = capsys.readouterr().err
    assert "Nothing was written" in err and "no-such-run" in err and "Traceback" not in err
    assert notebook.run_model_card(ws, form(notebook.RunChoice(run="demo")), None) is None
    assert "run the evaluation first" in capsys.readouterr().out


def test_upload_uses_the_saved_token_and_never_shows_it(ws, evaluated, monkeypatch, capsys):
    import huggingface_hub.constants as hf_constants

    choice = form(notebook.RunChoice(run="demo"))
    assert notebook.run_upload(ws, choice, form(notebook.UploadChoice()), evaluated) is None
    assert "nothing uploaded" in capsys.readouterr().out
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr("helpers.hub.upload.LARGE_BYTES", 1000)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # where notebook 00's saved token is found (HF's token file otherwise)
    with HubStandIn({TOKEN: ("me", "write", [])}) as hub:
        monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
        done = notebook.run_upload(ws, choice, form(notebook.UploadChoice(repo_id="nb-model")), evaluated)
        repo = hub.repos["me/nb-model"]
    assert done is not None and repo.private and "README.md" in repo.files and "demo.safetensors" in repo.files
    output = capsys.readouterr()
    assert TOKEN not in output.out + output.err and "me/nb-model" in output.out


def test_charts_and_memorised_pairs_are_shown_as_pictures(ws, evaluated, capsys):
    notebook.show_evaluation(evaluated)  # outside a kernel display() prints; it must not raise
    generated = sorted((evaluated.folder / "grids").rglob("*.png"))[0]
    training = sorted((ws.datasets / "demo").glob("*.png"))[0]
    flagged = [{"variant": "epoch 2 @ 1", "prompt": "a <b>circle</b>", "generated": str(generated),
                "training": str(training), "similarity": 0.991, "encoder": "dino"}] * 8
    shown = notebook.flagged_html(flagged, most=2)
    assert shown.count("src='data:image/png;base64,") == 4 and "… and 6 more" in shown
    assert "a &lt;b&gt;circle&lt;/b&gt;" in shown and "0.991" in shown
