"""The demo run evaluated end to end on tiny models (grids through the generation core, tiny CLIP and DINOv2):
metrics per checkpoint × strength, the recommendation, metrics.json, charts, a report whose every image is
there, the model cards; and the bad input (no checkpoints, a changed dataset, an encoder that cannot be had)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from helpers.evaluation import EvaluationError, evaluate_run, write_model_card
from helpers.evaluation.demo import demo_settings
from helpers.workspace import Workspace


def copy_demo(demo_workspace: Path, dest: Path) -> Workspace:
    """The parts of the demo workspace an evaluation reads (mtimes kept), so tests never write into the shared one."""
    src = Path(demo_workspace)
    ws = Workspace.open(dest)
    shutil.copytree(src / "models", ws.models, dirs_exist_ok=True)
    shutil.copytree(src / "datasets" / "demo", ws.datasets / "demo", ignore=shutil.ignore_patterns(".tunebook_*"))
    shutil.copytree(src / "runs" / "demo", ws.runs / "demo",
                    ignore=shutil.ignore_patterns("state", "tensorboard", "evaluation"))
    for lora in (src / "exports").glob("demo-e*.safetensors"):
        shutil.copy2(lora, ws.exports / lora.name)
    shutil.copytree(src / "cache" / "dataset-advice" / "demo", ws.cache / "dataset-advice" / "demo")
    return ws


@pytest.fixture(scope="module")
def evaluated(demo_workspace, tmp_path_factory):
    ws = copy_demo(demo_workspace, tmp_path_factory.mktemp("eval") / "ws")
    # the tiny random DINOv2 puts every image 0.97-0.98 from a training image: at 0.9 all are flagged, so the
    # report's side-by-side pairs are exercised (the demo itself uses 0.99)
    evaluation = evaluate_run(ws, "demo", demo_settings(ws, memorisation_threshold=0.9), progress=False,
                              echo=lambda _m: None)
    return ws, evaluation


def test_every_checkpoint_and_strength_is_scored(evaluated):
    ws, ev = evaluated
    assert set(ev.metrics) == {(c, s) for c in ("epoch 1", "epoch 2") for s in (0.0, 0.5, 1.0)} | {("base model", 0)}
    for (checkpoint, strength), m in ev.metrics.items():
        for key in ("clip_score_captions", "clip_score_new", "clip_score_trigger", "fidelity_clip", "fidelity_dino",
                    "centroid_distance_dino", "vendi", "preservation", "memorised"):
            assert key in m, (checkpoint, strength, key)
        assert 1.0 <= m["vendi"] <= 2.0 + 1e-9  # 2 images per prompt
    assert ev.metrics[("epoch 1", 0.0)] == ev.metrics[("epoch 2", 0.0)]  # strength 0 is the base model
    assert ev.metrics[("epoch 1", 0.0)]["preservation"] == 1.0
    assert ev.metrics[("epoch 2", 1.0)] != ev.metrics[("epoch 2", 0.5)]  # the LoRA changed the images


def test_the_recommendation_names_an_evaluated_checkpoint_in_one_sentence(evaluated):
    _, ev = evaluated
    rec = ev.recommendation
    assert rec.checkpoint in ("epoch 1", "epoch 2") and rec.strength in (0.5, 1.0)
    assert rec.sentence.startswith(f"{rec.checkpoint} at {rec.strength:g}: ") and rec.sentence.endswith(".")
    assert rec.lora and Path(rec.lora).name.startswith("demo-e")
    assert "fidelity" in rec.sentence and "memorised images" in rec.sentence and "fails memorisation" in rec.sentence


def test_metrics_json_and_the_images_are_on_disk(evaluated):
    from helpers.generation.parameters import read_png_parameters

    ws, ev = evaluated
    data = json.loads(ev.metrics_path.read_text())
    assert data["triggers"] == ["circle", "zkps"] and data["recommendation"]["sentence"] == ev.recommendation.sentence
    files = [Path(f) for cells in data["images"].values() for cell in cells for f in cell]
    assert len(files) == 5 * 9 * 2 and all(f.is_file() for f in files)  # 5 variants × 9 prompts × 2 images
    lora_cell = next(f for f in files if "<lora:demo-e0002:0.5>" in (read_png_parameters(f) or ""))
    assert lora_cell.parent.parent.name == "grids"
    assert {p.name for p in ev.charts.values()} >= {"fidelity_dino.png", "clip_score_new.png", "vendi.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in ev.charts.values())
    assert list((ws.cache / "embeddings").glob("*.safetensors"))  # the training set's embeddings, cached


def test_the_report_opens_offline_with_every_image_present(evaluated):
    _, ev = evaluated
    page = ev.report_path.read_text()
    sources = re.findall(r"src='([^']+)'", page)
    assert len(sources) >= len(ev.charts) + 4
    assert all(src.startswith("data:image/") for src in sources), "an image is not inside the page"
    links = re.findall(r"href='([^']+)'", page)
    assert links and all((ev.report_path.parent / href).is_file() for href in links), "a full-size grid is missing"
    assert "http://" not in page and "https://" not in page
    assert ev.recommendation.sentence.replace("'", "&#x27;") in page
    variants = [m for (c, s), m in ev.metrics.items() if s > 0 or c == "base model"]  # strength 0 = the base
    assert len(ev.flagged) == sum(m["memorised"] for m in variants)
    assert page.count("alt='training image'") == min(len(ev.flagged), 100) > 0
    assert all(f["similarity"] >= 0.9 and Path(f["training"]).is_file() for f in ev.flagged)
    assert "peak VRAM (GB)" in page and "images/s" in page


def test_model_cards_for_the_hub_and_civitai(evaluated):
    ws, ev = evaluated
    hub = write_model_card(ws, "demo", ev, target="hub")
    text = hub.read_text()
    assert text.startswith("---\n") and 'instance_prompt: "circle, zkps"' in text
    assert "`circle`, `zkps`" in text and ev.recommendation.sentence in text and "template `demo_tiny`" in text
    samples = re.findall(r"!\[sample\]\(([^)]+)\)", text)
    assert samples and all((hub.parent / s).is_file() for s in samples)
    assert "Steps: 4, Sampler: Euler a" in text  # each sample's parameters
    civitai = write_model_card(ws, "demo", None, target="civitai").read_text()
    assert not civitai.startswith("---") and "## Trigger words" in civitai


def test_a_run_without_checkpoints_and_unknown_names_are_refused_before_loading(evaluated, tmp_path):
    ws, _ = evaluated
    empty = ws.run("empty").create()
    shutil.copy2(ws.run("demo").config, empty.config)
    with pytest.raises(EvaluationError, match="no checkpoints"):
        evaluate_run(ws, "empty", demo_settings(ws))
    with pytest.raises(EvaluationError, match="no run 'nope'.*runs: demo, empty"):
        evaluate_run(ws, "nope", demo_settings(ws))
    with pytest.raises(EvaluationError, match="'epoch 9' is not one of this run's checkpoints"):
        evaluate_run(ws, "demo", demo_settings(ws, checkpoints=["epoch 9"]))
    with pytest.raises(EvaluationError, match="prompt_sets: unknown: nonsense"):
        evaluate_run(ws, "demo", demo_settings(ws, prompt_sets=["nonsense"]))
    with pytest.raises(EvaluationError, match="LoRA .*nowhere.safetensors \\(for epoch 2\\) not found"):
        evaluate_run(ws, "demo", demo_settings(ws), lora=tmp_path / "nowhere.safetensors")
    with pytest.raises(EvaluationError, match="demo.safetensors is not a LoRA file"):
        evaluate_run(ws, "demo", demo_settings(ws), lora=ws.run("demo").checkpoints / "demo.safetensors")


def small(ws, **changes):
    """One checkpoint, strengths 0 and 1, the trigger prompts only, one image each: 4 images."""
    return demo_settings(ws, checkpoints=["epoch 2"], strengths=[0.0, 1.0], prompt_sets=["trigger"],
                         preservation_prompts=0, images_per_prompt=1, **changes)


def test_a_changed_dataset_is_refused_unless_allowed(demo_workspace, tmp_path):
    ws = copy_demo(demo_workspace, tmp_path / "ws")
    caption = sorted((ws.datasets / "demo").rglob("*.txt"))[0]
    caption.write_text("edited after training")
    with pytest.raises(EvaluationError, match=r"changed since run demo trained on it: .*changed after training"):
        evaluate_run(ws, "demo", small(ws))
    (ws.datasets / "demo" / "extra.png").write_bytes(next((ws.datasets / "demo").rglob("*.png")).read_bytes())
    (ws.datasets / "demo" / "extra.txt").write_text("a new image")
    with pytest.raises(EvaluationError, match="13 images now, 12 when training read it"):
        evaluate_run(ws, "demo", small(ws))
    # an encoder that cannot be downloaded is a note, and the other metrics go on
    os.environ["HF_HUB_OFFLINE"] = "1"
    ev = evaluate_run(ws, "demo", small(ws, encoder_path="nobody/no-such-encoder"), allow_changed_dataset=True,
                      progress=False, echo=lambda _m: None)
    assert any("changed since" in n for n in ev.notes)
    assert any(n.startswith("text alignment and CLIP image similarity skipped: could not download "
                            "nobody/no-such-encoder") for n in ev.notes)
    m = ev.metrics[("epoch 2", 1.0)]
    assert "fidelity_dino" in m and not any(k.startswith("clip_score") for k in m)
    assert ev.report_path.is_file() and "could not download" in ev.report_path.read_text()


def test_command_line(evaluated, capsys):
    from helpers.evaluation.__main__ import main

    ws, _ = evaluated
    assert main(["--workspace", str(ws.root), "run", "nope"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["--workspace", str(ws.root), "card", "demo", "--target", "civitai"]) == 0
    assert capsys.readouterr().out.strip().endswith("civitai.md")


def test_images_held_out_for_validation_are_not_a_dataset_change(tmp_path):
    """A run with the validation loss on trained on fewer images than the folder holds: that is no change."""
    import time

    from PIL import Image

    from helpers.evaluation.inputs import dataset_changes

    for i in range(5):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"image {i}")
    later = time.time() + 5
    events = [{"event": "data", "time": later, "report": {"images": 4, "held_out": ["3.png"]}}]
    assert dataset_changes(tmp_path, events) == []
    events[0]["report"]["held_out"] = []
    assert dataset_changes(tmp_path, events) == ["5 images now, 4 when training read it"]
