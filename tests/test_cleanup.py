"""Cleanup: the disk report by category, and deletion for real of exactly what is ticked — never a final model
without the second tick, never a path outside the workspace, never what a running trainer is writing."""

from __future__ import annotations

import json
import time

import pytest

from helpers import cleanup
from helpers.cleanup import CleanupConfig, CleanupError, check_deletable, plan_cleanup, run_cleanup
from helpers.workspace import RunPaths


def blob(path, size: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def state(run: RunPaths, step: int, size: int = 1000):
    folder = run.state / f"step-{step:08d}"
    blob(folder / "weights.safetensors", size)
    (folder / "trainer.json").write_text("{}")
    return folder


@pytest.fixture
def ws(workspace):
    """Run 'done' finished (final + -noema, two periodic files, two states, a killed save's leftover); run 'live'
    is training now (two states and its save in progress); a latent cache; Jupyter's trash."""
    done, live = workspace.run("done").create(), workspace.run("live").create()
    blob(done.checkpoint(), 7000)
    blob(done.checkpoint(noema=True), 7000)
    blob(done.checkpoint(epoch=1), 5000)
    blob(done.checkpoint(epoch=2), 5000)
    state(done, 10)
    state(done, 20)
    blob(done.state / ".tmp-step-00000030-999999" / "weights.safetensors", 300)
    state(live, 5)
    state(live, 10)
    blob(live.state / ".tmp-step-00000015-1" / "weights.safetensors", 300)
    live.status.write_text(json.dumps({"state": "training", "updated": time.time()}))
    blob(workspace.cache / "latents" / "abc" / "1.safetensors", 4000)
    blob(workspace.root / ".Trash-0" / "files" / "old-model.safetensors", 9000)
    return workspace


def test_the_report_counts_each_category(ws):
    report = cleanup.disk_report(ws)
    assert report["runs: final models"] == 14000 and report["runs: intermediate checkpoints"] == 10000
    assert report["runs: training states"] == 4 * 1002 + 2 * 300 and report["cache: latents"] == 4000
    assert report["Jupyter trash"] == 9000 and report["free"] > 0
    assert "Jupyter trash" in cleanup.format_report(report)


def test_nothing_ticked_deletes_nothing(ws):
    before = sorted(p for p in ws.root.rglob("*"))
    assert run_cleanup(ws, CleanupConfig()) is None
    assert sorted(p for p in ws.root.rglob("*")) == before


def test_old_states_keep_the_newest_and_a_live_save(ws):
    plan = plan_cleanup(ws, CleanupConfig(old_states=True, latent_caches=True))
    names = {(r.path.parent.parent.name, r.path.name) for r in plan.removals}
    assert names == {("done", "step-00000010"), ("done", ".tmp-step-00000030-999999"), ("live", "step-00000005")}
    assert any("latent caches kept: live is training" in n for n in plan.notes)
    result = cleanup.apply_cleanup(ws, plan)
    assert not result["failed"] and [p.name for p in ws.run("done").states()] == ["step-00000020"]
    assert (ws.run("live").state / ".tmp-step-00000015-1").exists() and (ws.cache / "latents").exists()


def test_final_models_need_the_second_tick(ws):
    once = plan_cleanup(ws, CleanupConfig(final_models=True))
    assert not once.removals and "tick confirm_final_models" in once.notes[0]
    twice = plan_cleanup(ws, CleanupConfig(final_models=True, confirm_final_models=True, runs=["done"]))
    assert sorted(r.path.name for r in twice.removals) == ["done-noema.safetensors", "done.safetensors"]
    cleanup.apply_cleanup(ws, twice)
    assert not ws.run("done").final_models()


def test_intermediate_checkpoints_trash_and_finished_states(ws):
    run_cleanup(ws, CleanupConfig(intermediate_checkpoints=True, trash=True, states_of_finished_runs=True))
    done = ws.run("done")
    assert not done.periodic_checkpoints() and len(done.final_models()) == 2 and not done.states()
    assert not (ws.root / ".Trash-0").exists() and len(ws.run("live").states()) == 2  # live has no final model


def test_paths_outside_the_workspace_and_its_own_folders_are_refused(ws, tmp_path):
    outside = blob(tmp_path / "precious.safetensors", 10)
    with pytest.raises(CleanupError, match="outside the workspace"):
        check_deletable(ws, outside)
    with pytest.raises(CleanupError, match="outside the workspace"):
        check_deletable(ws, ws.runs / ".." / ".." / "precious.safetensors")
    with pytest.raises(CleanupError, match="workspace's own folders"):
        check_deletable(ws, ws.models)
    with pytest.raises(CleanupError, match="final model"):
        check_deletable(ws, ws.run("done").root)
    link = ws.models / "linked-base"
    link.symlink_to(outside)  # a base model linked, not copied: deleting it removes the link only
    cleanup.apply_cleanup(ws, cleanup.plan_paths(ws, [str(link)]))
    assert not link.is_symlink() and outside.read_bytes() == b"x" * 10


def test_the_command_line_previews_refuses_and_deletes(ws, tmp_path, capsys):
    root = ["--workspace", str(ws.root)]
    assert cleanup.main([*root, "delete", str(tmp_path)]) == 2
    assert "outside the workspace" in capsys.readouterr().err
    assert cleanup.main([*root, "clean", "--trash"]) == 0
    assert "add --yes" in capsys.readouterr().out and (ws.root / ".Trash-0").exists()
    assert cleanup.main([*root, "clean", "--trash", "--yes"]) == 0
    assert not (ws.root / ".Trash-0").exists() and "freed" in capsys.readouterr().out
