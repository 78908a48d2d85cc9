"""Every notebook in notebooks/: hygiene (thin, stripped, one shape) and a headless run that must produce its outputs.

A notebook added later joins both automatically. The run uses nbclient with the venv's kernel on a copy of the
demo workspace (``python -m helpers demo``, plus a tiny Florence-2 so notebook 03's captioner runs offline),
in order, so each notebook reads what the earlier ones wrote. A run passes only when
- no cell raised or printed a traceback,
- no stage reported an error (``helpers.ui.errors``: a stage wrapper's marked output, or error text in a widget),
- and the notebook's outputs are on disk: ``OUTPUTS`` holds, per notebook, what to set up before the run and what
  must be there after it. A new notebook fails until it says what it writes there.
Executed copies are kept under ``test-output/notebooks/`` for a look.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from helpers.ui.errors import ERROR_CLASS, METADATA_KEY
from helpers.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
OUT = ROOT / "test-output" / "notebooks"
MAX_CELL_LINES = 12


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ is empty"
    assert NOTEBOOKS[0].name.startswith("00_setup")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_hygiene(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "tunebook", "kernelspec must be 'tunebook'"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# "), "start with a markdown title"
    assert "Reads" in first.source and "Writes" in first.source, "the title cell says what it reads and writes"
    cells = code_cells(nb)
    assert cells, "no code cells"
    import_cells = []
    for i, cell in enumerate(cells):
        assert not cell.outputs and cell.execution_count is None, f"code cell {i} has outputs: strip them"
        lines = [ln for ln in cell.source.splitlines() if ln.strip()]
        assert len(lines) <= MAX_CELL_LINES, f"code cell {i} has {len(lines)} lines (max {MAX_CELL_LINES})"
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
                f"code cell {i} defines a function/class: move it into helpers/"
            assert not isinstance(node, ast.Global), f"code cell {i} uses `global`"
        if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body):
            import_cells.append(i)
    assert import_cells == [0], f"exactly one import cell, the first code cell (imports found in cells {import_cells})"


# ---------------------------------------------------------------- running them


@pytest.fixture(scope="module")
def notebook_workspace(demo_workspace, tmp_path_factory) -> Workspace:
    """A copy of the demo workspace the notebooks run on, in order, with a tiny offline captioner among its models."""
    from tests.test_captioning_captioners import build_tiny_florence2

    root = tmp_path_factory.mktemp("notebooks") / "ws"
    shutil.copytree(demo_workspace, root, symlinks=True)
    build_tiny_florence2(root / "models" / "tiny-florence2")
    return Workspace.open(root)


@pytest.fixture
def kernel_env(notebook_workspace, monkeypatch):
    """What the notebook kernel inherits: the workspace, offline, one thread."""
    monkeypatch.setenv("TUNEBOOK_WORKSPACE", str(notebook_workspace.root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return notebook_workspace


def notebook_client(nb, timeout: int = 600, **options):
    import nbclient

    return nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                   resources={"metadata": {"path": str(ROOT)}}, **options)


def reported_errors(nb) -> list[str]:
    """Every way a run can show a failure: a raised cell, a printed traceback, a stage's marked error output,
    error text in a widget (a form's status, the training monitor)."""
    found = []
    for i, cell in enumerate(code_cells(nb)):
        for out in cell.outputs:
            data = out.get("data", {})
            text = out.get("text", "") + str(data.get("text/plain", ""))
            mark = (out.get("metadata") or {}).get(METADATA_KEY) or {}
            if out.get("output_type") == "error":
                found.append(f"cell {i} raised {out.get('ename')}: {out.get('evalue')}")
            elif "Traceback (most recent call last)" in text:
                found.append(f"cell {i} printed a traceback:\n{text[-2000:]}")
            elif mark.get("stage_error") or ERROR_CLASS in str(data.get("text/html", "")):
                found.append(f"cell {i}: stage error: {mark.get('stage_error') or text}")
    widgets = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for model in widgets.values():
        value = str(model.get("state", {}).get("value", ""))
        if ERROR_CLASS in value:
            found.append(f"a {model.get('model_name')} shows an error: {value[:500]}")
    return found


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``folder``, by relative path."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k, v in after.items() if before.get(k) != v} | (set(before) - set(after))


# ---------------------------------------------------------------- what each notebook must leave on disk


@dataclass
class Outputs:
    """What a notebook needs set up before it runs, and what must be on disk after."""

    check: Callable[[Workspace, dict], None]
    prepare: Callable[[Workspace], dict] = lambda ws: {}


def _untouched(*areas: str):
    """A notebook whose demo run (forms at their defaults) must change nothing in these workspace folders."""

    def prepare(ws):
        return {a: snapshot(ws.root / a) for a in areas}

    def check(ws, before):
        for area in areas:
            moved = changed(before[area], snapshot(ws.root / area))
            assert not moved, f"{area}/ changed although nothing was asked: {sorted(moved)[:10]}"

    return Outputs(check, prepare)


# images of the demo dataset whose caption 02 must write from the filename (numbering and all stripped)
FILENAME_CAPTIONS = {"a blue circle on yellow-3.png": "a blue circle on yellow",
                     "a blue square on white_02.jpg": "a blue square on white",
                     "a green triangle on red (2).webp": "a green triangle on red"}


def _prepare_02(ws):
    folder = ws.dataset("demo")
    for name in FILENAME_CAPTIONS:
        assert (folder / name).exists(), f"the demo dataset no longer has {name}: update FILENAME_CAPTIONS"
        (folder / name).with_suffix(".txt").unlink()
        (folder / name).with_suffix(".captions.json").unlink(missing_ok=True)
    return {"others": {p.name: p.read_text() for p in folder.glob("*.txt")}}


def _check_02(ws, before):
    folder = ws.dataset("demo")
    for name, caption in FILENAME_CAPTIONS.items():
        txt = (folder / name).with_suffix(".txt")
        assert txt.exists(), f"02 wrote no caption for {name}"
        assert txt.read_text(encoding="utf-8").strip() == caption, f"02 wrote {txt.read_text()!r} for {name}"
    kept = {name: (folder / name).read_text() for name in before["others"]}
    assert kept == before["others"], "02 changed captions that existed (overwrite is off)"


def _check_03(ws, before):
    folder = ws.dataset("demo")
    images = [p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".webp")]
    assert len(images) >= len(FILENAME_CAPTIONS)
    for image in images:  # the caption record 03 promises beside each image (its title cell)
        record = json.loads(image.with_suffix(".captions.json").read_text(encoding="utf-8"))
        assert record["captions"].get("tiny-florence2"), f"03's captioner left no caption in {image.name}'s record"
        assert record["tags"], f"03 left {image.name} without tags"
    for name in FILENAME_CAPTIONS:  # 02 captioned these with no record: 03's tagger had to tag them
        record = json.loads((folder / name).with_suffix(".captions.json").read_text(encoding="utf-8"))
        assert record["sources"].get("tags"), f"03's tagger skipped {name}"


def _prepare_01(ws):
    return {**_untouched("models").prepare(ws), "images": snapshot(ws.dataset("demo")),
            "advice": snapshot(ws.cache / "dataset-advice" / "demo")}


def _check_01(ws, before):
    """No source given and nothing ticked: nothing downloaded, no image changed; the composition report written
    (its JSON and chart, its section in the dataset report) and the upscale preview."""
    _untouched("models").check(ws, before)
    moved = changed(before["images"], snapshot(ws.dataset("demo")))
    assert moved <= {".tunebook_report.json"}, f"01 changed dataset files although nothing was ticked: {moved}"
    report = json.loads((ws.dataset("demo") / ".tunebook_report.json").read_text(encoding="utf-8"))
    assert report.get("composition", {}).get("counts"), "01's composition is not in the dataset report"
    advice = ws.cache / "dataset-advice" / "demo"
    new = changed(before["advice"], snapshot(advice))
    for name in ("composition.json", "composition.png", "upscale-preview.png"):
        assert name in new, f"01 did not write {name} (wrote {sorted(new)})"


def _check_triggers(ws, before):
    triggers = ws.cache / "dataset-advice" / "demo" / "triggers.json"
    assert triggers.exists(), "the trigger-word check wrote no triggers.json"
    assert json.loads(triggers.read_text(encoding="utf-8")), "triggers.json is empty"


def _prepare_04(ws):
    return {"runs": set(ws.list_runs())}


def _check_04(ws, before):
    from safetensors import safe_open

    from helpers import ledger, runner
    from helpers.training.progress import step_losses

    new = [ws.run(n) for n in set(ws.list_runs()) - before["runs"]]
    assert len(new) == 1, f"04 should start one run, found {[r.name for r in new]}"
    run = new[0]
    status = runner.wait_job(run, timeout=600)  # watching returns at once: the training goes on after the cells
    assert status.state == "finished", f"{status}\n{run.stdout.read_text()[-2000:]}"
    final = run.checkpoints / f"{run.name}.safetensors"
    assert final.exists() and run.config.exists(), sorted(p.name for p in run.root.rglob("*"))
    with safe_open(str(final), "pt") as fh:
        assert any(k.startswith("model.diffusion_model.") for k in fh.keys()), "the checkpoint has no U-Net"
    assert sorted(step_losses(run.log)) == list(range(1, status.total_steps + 1))
    # what the rented-box cells and the trainer add: the estimate it started with, its summary, its paid time
    preflight = json.loads(run.preflight.read_text(encoding="utf-8"))
    assert preflight["steps"] == status.total_steps and preflight["model_source"].startswith("read from")
    summary = json.loads(run.summary.read_text(encoding="utf-8"))
    assert summary["steps"] == status.total_steps and summary["training_hours"] > 0 and "trained in" in summary["cost"]
    training = [r for r in ledger.read_ledger(ws.root) if r.get("stage") == "training" and r.get("detail") == run.name]
    assert training, "04's run left no training time in the cost ledger"


def _prepare_05(ws):
    return {"exports": snapshot(ws.exports)}


def _check_05(ws, before):
    from safetensors import safe_open

    new = sorted(changed(before["exports"], snapshot(ws.exports)))
    loras = [n for n in new if n.endswith(".safetensors")]
    assert any(n.endswith("-lora-r128.safetensors") for n in loras), f"05 exported no rank-128 LoRA: {new}"
    assert any(n.endswith("-lora-r16.safetensors") for n in loras), f"05 wrote no resized rank-16 LoRA: {new}"
    assert any(n.endswith(".fidelity.json") for n in new), f"05 wrote no fidelity report: {new}"
    for name in loras:
        with safe_open(str(ws.exports / name), "pt") as fh:
            keys, meta = list(fh.keys()), fh.metadata() or {}
        assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in keys), name
        assert meta.get("ss_network_dim"), f"{name} lacks the kohya metadata"


def _prepare_06(ws):
    from helpers.evaluation.notebook import suggest_choice

    run = suggest_choice(ws).run  # what the form preselects: the newest run with checkpoints (04's, in order)
    assert run, "no run with checkpoints for 06 to evaluate"
    return {"run": run, "evaluation": snapshot(ws.run(run).root / "evaluation")}


def _check_06(ws, before):
    """That run evaluated afresh: report, metrics (with a recommendation), charts and both model cards."""
    folder = ws.run(before["run"]).root / "evaluation"
    new = changed(before["evaluation"], snapshot(folder))
    for name in ("report.html", "metrics.json", "README.md", "civitai.md"):
        assert name in new, f"06 did not write {name} (wrote {sorted(new)[:20]})"
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["run"] == before["run"] and metrics["variants"] and metrics["recommendation"]["sentence"]
    assert any(n.startswith("charts/") and n.endswith(".png") for n in new), "06 drew no chart"
    report = (folder / "report.html").read_text(encoding="utf-8")
    linked = re.findall(r"""<img[^>]*\ssrc=["'](?!data:)([^"']*)""", report)  # opens offline: beside it
    missing = [src for src in linked if not (folder / src).is_file()]
    assert "data:image/png;base64," in report and not missing, f"the report shows missing images: {missing[:3]}"
    assert f"# {before['run']}" in (folder / "README.md").read_text(encoding="utf-8")


def _check_00(ws, before):
    """The default forms change nothing (the cleanup has nothing ticked); setup starts the cost ledger."""
    _untouched("datasets", "models", "runs", "exports").check(ws, before)
    from helpers import ledger

    assert any(r["event"] == "setup" for r in ledger.read_ledger(ws.root)), "00 did not start the cost ledger"


OUTPUTS: dict[str, Outputs] = {
    "00_setup": Outputs(_check_00, _untouched("datasets", "models", "runs", "exports").prepare),
    "01_download": Outputs(_check_01, _prepare_01),  # no source given, nothing ticked: check and advice only
    "02_captions_from_filenames": Outputs(lambda ws, b: (_check_02(ws, b), _check_triggers(ws, b)), _prepare_02),
    "03_caption_images": Outputs(lambda ws, b: (_check_03(ws, b), _check_triggers(ws, b))),
    "04_train": Outputs(_check_04, _prepare_04),
    "05_extract_resize_lora": Outputs(_check_05, _prepare_05),
    "06_evaluate": Outputs(_check_06, _prepare_06),
}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, kernel_env):
    expected = OUTPUTS.get(path.stem)
    if expected is None:
        pytest.fail(f"{path.name}: say what it writes: add its on-disk check to OUTPUTS in {Path(__file__).name}")
    ws = kernel_env
    before = expected.prepare(ws)
    nb = nbformat.read(path, as_version=4)
    try:
        notebook_client(nb).execute()
    finally:
        OUT.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, OUT / path.name)
    errors = reported_errors(nb)
    assert not errors, f"{path.name} (executed copy: {OUT / path.name}):\n" + "\n".join(errors)
    expected.check(ws, before)


@pytest.mark.slow
def test_reported_errors_sees_each_kind_of_failure():
    """The detector the run test relies on, on a real kernel: a stage wrapper's message, error text in a widget,
    a raised cell; plain output is no error."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (
        "import ipywidgets as w\nfrom helpers.ui.errors import error_html, stage_failed",
        'stage_failed("download failed: 404 for https://example.invalid/x.zip", "download")',
        'display(w.HTML(error_html("died: out of memory")))',
        'print("fine")',
        'raise ValueError("bad value")')]
    notebook_client(nb, timeout=120, allow_errors=True).execute()
    found = reported_errors(nb)
    assert len(found) == 3, found
    assert "download failed: 404" in found[0] and "ValueError" in found[1] and "out of memory" in found[2]
    assert "download failed: 404" in str(nb.cells[1].outputs[0]["data"]["text/plain"])  # what the person reads


def test_stage_failed_outside_a_notebook_goes_to_stderr(capsys):
    from helpers.ui.errors import stage_failed

    stage_failed("model download failed: no such repo")
    captured = capsys.readouterr()
    assert captured.err.strip() == "model download failed: no such repo" and not captured.out


# ---------------------------------------------------------------- notebook 04 driven cell by cell


def _run_cell(client, nb, source: str) -> str:
    """Append a cell (as a person types one), run it, return its text output."""
    nb.cells.append(nbformat.v4.new_code_cell(source))
    client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
    outs = nb.cells[-1].outputs
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for o in outs if o.get("output_type") == "error"]
    assert not errors, f"{source!r} raised {errors}"
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outs)


@pytest.mark.slow
def test_train_notebook_launches_the_form_as_shown_and_keeps_the_kernel_free(kernel_env):
    """Edit the form after the pre-flight: the launched config.toml has the edit. Then Watch returns at once, a
    later cell runs while the training and the monitor go on, and the monitor moves with no cell running."""
    from helpers import runner
    from helpers.config import build_config, load_config
    from helpers.training.config import TrainConfig

    ws = kernel_env
    nb = nbformat.read(ROOT / "notebooks" / "04_train.ipynb", as_version=4)
    cells = code_cells(nb)
    imports, form, preflight, launch, watch = (nb.cells.index(c) for c in cells[:5])
    assert "start_job" in nb.cells[launch].source and "watch()" in nb.cells[watch].source  # the cells moved?
    template_epochs = build_config(TrainConfig, "demo_tiny").epochs
    client = notebook_client(nb, timeout=300)
    run = None
    with client.setup_kernel():
        try:
            for index in (imports, form, preflight):
                client.execute_cell(nb.cells[index], index)
            _run_cell(client, nb, f'form.rows["epochs"].input.value = {template_epochs + 28}')  # typed after it
            client.execute_cell(nb.cells[launch], launch)
            run = runner.latest_run(ws)
            assert load_config(TrainConfig, run.config).epochs == template_epochs + 28, \
                "the launch cell started the config read for the pre-flight, not what the form shows now"
            started = time.monotonic()
            client.execute_cell(nb.cells[watch], watch)
            assert time.monotonic() - started < 20, "the Watch cell blocked the kernel"
            # the kernel is free: this cell runs while the training and the watcher are both alive
            assert _run_cell(client, nb, "print(runner.job_status(run).alive, monitor.watching)").split() == \
                ["True", "True"]
            shown = int(_run_cell(client, nb, "print(monitor.bar.value)"))
            deadline = time.monotonic() + 240
            while runner.job_status(run).step < shown + 3 and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(2.5)  # a couple of the watcher's one-second refreshes, with no cell running
            now = int(_run_cell(client, nb, "print(monitor.bar.value)"))
            assert now >= shown + 3, f"the monitor did not move by itself ({shown} -> {now})"
            _run_cell(client, nb, "monitor.stop()\nrunner.stop_job(run)")
            assert not runner.job_status(run).alive
        finally:
            if run is not None and runner.job_status(run).alive:
                runner.stop_job(run, timeout=30)
    OUT.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, OUT / "04_train-cell-by-cell.ipynb")
