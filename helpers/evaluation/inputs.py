"""What an evaluation reads before any model is loaded: the run, its checkpoints (epoch, step), the LoRA of each,
the base model, the dataset (and whether it changed since training), the trigger words and the prompt sets.

Every problem here is an ``EvaluationError`` naming the file or setting and the fix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from helpers.evaluation.settings import EvalSettings, EvaluationError
from helpers.workspace import RunPaths, Workspace


@dataclass
class Checkpoint:
    """One model file of the run, with the epoch/step it was saved at and the LoRA extracted from it (if any)."""

    path: Path
    label: str
    epoch: int | None
    step: int | None
    lora: Path | None = None


@dataclass
class RunInputs:
    run: RunPaths
    base: Path
    dataset: Path
    checkpoints: list[Checkpoint]
    triggers: list[str]
    config: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def read_log_events(run: RunPaths) -> list[dict]:
    """The event lines of the run's ``log.jsonl`` (read by the trainer's one log reader)."""
    from helpers.training.progress import read_log

    return [record for record in read_log(run.log) if "event" in record]


def _label(ck: Checkpoint) -> str:
    return f"epoch {ck.epoch}" if ck.epoch is not None else f"step {ck.step}" if ck.step is not None else ck.path.stem


def list_checkpoints(run: RunPaths, events: list[dict]) -> list[Checkpoint]:
    """Periodic checkpoints then the final model, each with the epoch/step the training log recorded for it."""
    saved = {Path(e["path"]).name: e for e in events if e["event"] == "checkpoint" and e.get("path")}
    files = [*run.periodic_checkpoints(), *[p for p in run.final_models() if not p.stem.endswith("-noema")]]
    out = []
    for path in files:
        event = saved.get(path.name, {})
        m = re.search(r"-e(\d+)$", path.stem)
        epoch = event.get("epoch", int(m.group(1)) if m else None)
        ck = Checkpoint(path, "", epoch, event.get("step"))
        ck.label = _label(ck)
        out.append(ck)
    out.sort(key=lambda c: (c.epoch if c.epoch is not None else 10**9, c.step or 0))
    return out


def _is_lora(path: Path) -> bool:
    from helpers.models.checkpoint import read_safetensors_header

    try:
        header, _ = read_safetensors_header(path)
    except Exception:
        return False
    return any(k.startswith(("lora_", "lycoris_")) for k in header)


def find_loras(ws: Workspace, run: RunPaths, checkpoints: list[Checkpoint], lora=None) -> None:
    """The LoRA of each checkpoint: given (a file for the final checkpoint, or {checkpoint label or file name:
    file}), else ``exports/<run>-e<epoch>*.safetensors`` / ``-s<step>*`` (what extraction and the generation demo
    name them)."""
    given: dict[str, Path] = {}
    if isinstance(lora, dict):
        given = {str(k): Path(v) for k, v in lora.items()}
    elif lora:
        given = {checkpoints[-1].label: Path(lora)}
    for key, path in given.items():
        if not path.is_file():
            raise EvaluationError(f"LoRA {path} (for {key}) not found: extract one in notebook 05, or leave lora "
                                  "empty to evaluate the checkpoints themselves")
        if not _is_lora(path):
            raise EvaluationError(f"{path} is not a LoRA file (no lora_* keys): give a LoRA extracted from the run")
    for ck in checkpoints:
        chosen = given.get(ck.label) or given.get(ck.path.name) or given.get(ck.path.stem)
        if chosen is None and ws.exports.is_dir():
            tag = f"e{ck.epoch:04d}" if ck.epoch is not None else f"s{ck.step:08d}" if ck.step is not None else None
            found = sorted(p for p in ws.exports.glob(f"{run.name}-{tag}*.safetensors") if _is_lora(p)) if tag else []
            chosen = found[0] if found else None
        ck.lora = chosen


def pick_checkpoints(checkpoints: list[Checkpoint], wanted: list[str] | None) -> list[Checkpoint]:
    if not wanted:
        return checkpoints
    out = []
    for want in wanted:
        w = str(want).strip()
        match = [c for c in checkpoints if w in (c.label, c.path.name, c.path.stem, str(c.path))
                 or (w == "final" and c is checkpoints[-1]) or (w.isdigit() and c.epoch == int(w))]
        if not match:
            raise EvaluationError(f"checkpoints: {w!r} is not one of this run's checkpoints "
                                  f"({', '.join(c.label for c in checkpoints)}; or 'final')")
        out += [c for c in match if c not in out]
    return out


def dataset_changes(dataset: Path, events: list[dict]) -> list[str]:
    """How the dataset differs from what training read (image count; files changed after training read them)."""
    from helpers.dataset.files import dataset_entries

    data = [e for e in events if e["event"] == "data"]
    if not data:
        return []
    read_at = float(data[0].get("time", 0))
    report = data[0].get("report") or {}
    # images it trained on + those it held out for the validation loss (both are still in the folder)
    trained = int(report.get("images", 0)) + len(report.get("held_out") or [])
    entries, _ = dataset_entries(dataset)
    problems = []
    usable = [e for e in entries if e.caption is not None]
    if trained and len(usable) != trained:
        problems.append(f"{len(usable)} images now, {trained} when training read it")
    newer = [e.path.name for e in entries if e.path.stat().st_mtime > read_at + 1]
    newer += [p.name for e in entries for p in [e.path.with_suffix(".txt")] if p.is_file() and
              p.stat().st_mtime > read_at + 1]
    if newer:
        problems.append(f"{len(newer)} file(s) changed after training read them ({', '.join(newer[:4])}"
                        f"{' ...' if len(newer) > 4 else ''})")
    return problems


def saved_triggers(ws: Workspace, dataset: Path) -> list[str]:
    """The trigger words of the dataset's last trigger check (notebook 03), else none."""
    from helpers.dataset.report import advice_dir

    try:
        data = json.loads((advice_dir(ws.cache, dataset) / "triggers.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [str(t) for t in data.get("checked", []) if str(t).strip()]


def read_inputs(ws: Workspace, run_name: str, settings: EvalSettings, lora=None,
                allow_changed_dataset: bool = False) -> RunInputs:
    """Everything the evaluation needs from disk, checked (nothing loaded)."""
    problems = settings.check()
    if problems:
        raise EvaluationError("; ".join(f"{k}: {v}" for k, v in problems.items()))
    run = ws.run(run_name)
    if not run.config.is_file():
        runs = ", ".join(ws.list_runs()) if ws.runs.is_dir() else ""
        raise EvaluationError(f"no run {run_name!r} in {ws.runs} (no config.toml there); runs: {runs or 'none'}")
    try:
        config = tomllib.loads(run.config.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise EvaluationError(f"{run.config}: not valid TOML ({exc})") from None
    events = read_log_events(run)
    checkpoints = list_checkpoints(run, events)
    if not checkpoints:
        raise EvaluationError(f"run {run_name} has no checkpoints in {run.checkpoints}: train it (notebook 04) until "
                              "it saves a model, or set saving.save_every_n_epochs to keep intermediate ones")
    checkpoints = pick_checkpoints(checkpoints, settings.checkpoints)
    find_loras(ws, run, checkpoints, lora)
    base_name = str(config.get("model", {}).get("base_model", ""))
    base = next((p for p in (Path(base_name).expanduser(), ws.models / base_name) if base_name and p.exists()), None)
    if base is None:
        raise EvaluationError(f"the run's base model {base_name!r} ({run.config}, model.base_model) is not in "
                              f"{ws.models}: download it again (notebook 01) to compare with it")
    ds_name = str(config.get("data", {}).get("dataset", ""))
    dataset = next((p for p in (Path(ds_name).expanduser(), ws.datasets / ds_name) if ds_name and p.is_dir()), None)
    if dataset is None:
        raise EvaluationError(f"the run's dataset {ds_name!r} ({run.config}, data.dataset) is not in {ws.datasets}: "
                              "fidelity and memorisation compare with it, so put it back first")
    notes = []
    changed = dataset_changes(dataset, events)
    if changed:
        message = (f"dataset {dataset} changed since run {run_name} trained on it: {'; '.join(changed)}")
        if not allow_changed_dataset:
            raise EvaluationError(message + ". Fidelity and memorisation would compare with other images: restore "
                                  "it (its .tunebook_backups/ undo), or pass allow_changed_dataset=True "
                                  "(--allow-changed-dataset) to compare with it as it is now")
        notes.append(message + " (compared with it as it is now)")
    triggers = [t.strip() for t in settings.triggers if t.strip()] or saved_triggers(ws, dataset)
    return RunInputs(run, base, dataset, checkpoints, triggers, config, notes)
