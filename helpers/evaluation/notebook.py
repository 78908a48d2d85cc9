"""What notebook 06 calls: workspace-aware defaults for its forms, run-with-a-message wrappers, result views.

Owns the choice of what to evaluate (the newest run with checkpoints, the LoRAs notebook 05 exported from it),
settings that fit the machine (full grids on a GPU, a quick pass on a CPU), encoders already in ``models/``
(found there before anything is downloaded), and turning each step's problem into a message that says what to
fix instead of a traceback. The evaluation itself is ``helpers.evaluation`` (``evaluate_run``,
``write_model_card``, ``upload_evaluated``).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Literal

from helpers import ledger
from helpers.config import ConfigError, option
from helpers.evaluation import EvalSettings, EvaluationError, evaluate_run, upload_evaluated, write_model_card
from helpers.evaluation.report import data_uri
from helpers.generation.pipeline import GenerationError
from helpers.ui.errors import stage_failed
from helpers.workspace import Workspace

CPU_SETTINGS = {"caption_prompts": 2, "new_prompt_count": 2, "preservation_prompts": 1, "images_per_prompt": 2,
                "steps": 4}  # a quick pass: without a GPU only tiny models are worth drawing


@dataclass
class RunChoice:
    """Notebook 06: the training run to evaluate, and its LoRA."""

    format_version: ClassVar[int] = 1
    run: str = option("", help="the training run (runs/<name>) whose checkpoints are evaluated")
    lora: str = option("", help="a LoRA file for the run's last checkpoint (empty = the LoRAs notebook 05 "
                       "exported per epoch, exports/<run>-e<epoch>*.safetensors; a checkpoint without one is "
                       "evaluated as itself)", kind="path")

    def check(self) -> dict[str, str]:
        return {} if self.run else {"run": "choose a training run (notebook 04 makes one)"}


@dataclass
class UploadChoice:
    """Notebook 06: where the evaluated model goes (nothing is uploaded while the repo is empty)."""

    format_version: ClassVar[int] = 1
    repo_id: str = option("", help="Hub repo: owner/name, or name under your user (empty = upload nothing)")
    private: bool = option(True, help="a new repo is private (uncheck for public)")
    overwrite: bool = option(False, help="replace files a repo already holds from another model")
    target: Literal["hub", "civitai"] = option("hub", help="which model card goes with it")


def runs_with_checkpoints(ws: Workspace) -> list[str]:
    """Runs that saved at least one model file, newest first."""
    runs = [ws.run(n) for n in ws.list_runs()] if ws.runs.is_dir() else []
    found = [r for r in runs if r.checkpoints.is_dir() and any(r.checkpoints.glob("*.safetensors"))]
    return [r.name for r in sorted(found, key=lambda r: r.root.stat().st_mtime, reverse=True)]


def suggest_choice(ws: Workspace) -> RunChoice:
    return RunChoice(run=next(iter(runs_with_checkpoints(ws)), ""))


def describe_runs(ws: Workspace) -> str:
    runs = runs_with_checkpoints(ws)
    if not runs:
        return f"no training run with checkpoints in {ws.runs}: train one in notebook 04 first"
    lines = []
    for name in runs[:6]:
        run = ws.run(name)
        files = sorted(p.name for p in run.checkpoints.glob("*.safetensors"))
        loras = sorted(p.name for p in ws.exports.glob(f"{name}-*.safetensors")) if ws.exports.is_dir() else []
        lines.append(f"{name}: {len(files)} model file(s) ({', '.join(files[:4])}{' ...' if len(files) > 4 else ''})"
                     + (f"; LoRAs in exports: {', '.join(loras[:4])}" if loras else "; no LoRA exported yet"))
    return "\n".join(lines)


def local_encoder(ws: Workspace, kind: str) -> str:
    """An encoder folder of this model type already in ``models/`` (no download needed), or ""."""
    if not ws.models.is_dir():
        return ""
    for folder in sorted(p for p in ws.models.iterdir() if p.is_dir()):
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if config.get("model_type") == kind and any(folder.glob("*.safetensors")):
            return str(folder)
    return ""


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def suggest_settings(ws: Workspace, gpu: bool | None = None) -> EvalSettings:
    """The evaluation's defaults; encoders from ``models/`` when one is there; a quick pass without a GPU."""
    settings = EvalSettings(encoder_path=local_encoder(ws, "clip"), dino_path=local_encoder(ws, "dinov2"))
    if not (has_gpu() if gpu is None else gpu):
        settings = replace(settings, **CPU_SETTINGS, device="cpu")
    return settings


def _explain(exc: Exception, stage: str, what: str = "Nothing was written") -> None:
    if isinstance(exc, ConfigError):
        stage_failed("Fix these fields first:\n  " + "\n  ".join(f"{k}: {v}" for k, v in exc.problems.items()),
                     stage)
    else:
        stage_failed(f"{what}: {exc}", stage)


def run_evaluation(ws: Workspace, choice_form, settings_form):
    """Evaluate with the forms' values (grids, metrics, recommendation, report); a problem is a message."""
    try:
        choice, settings = choice_form.value, settings_form.value
        with ledger.stage(ws.root, "evaluation", detail=choice.run):  # paid time (helpers.ledger)
            evaluation = evaluate_run(ws, choice.run, settings, lora=choice.lora or None, progress=True)
    except (ConfigError, EvaluationError, GenerationError, ValueError, OSError) as exc:
        _explain(exc, "evaluate")
        return None
    rec = evaluation.recommendation
    print(f"evaluated {len(evaluation.metrics)} checkpoint × strength combinations in {evaluation.seconds:.0f} s")
    print("recommended: " + (rec.sentence if rec else "none (no checkpoint passed the rule; see the report)"))
    for note in evaluation.notes:
        print(f"note: {note}")
    print(f"report: {evaluation.report_path}")
    return evaluation


def metrics_table_html(evaluation) -> str:
    """The metrics as an HTML table: a row per checkpoint and strength, the recommended one in bold."""
    rows = evaluation.table()
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in ("checkpoint", "strength")]
    rec = evaluation.recommendation

    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value if value is not None else "-"))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["checkpoint", "strength", *columns])
    body = []
    for r in rows:
        chosen = rec is not None and (r["checkpoint"], float(r["strength"])) == (rec.checkpoint, float(rec.strength))
        style = " style='font-weight:bold'" if chosen else ""
        body.append(f"<tr{style}>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in ["checkpoint", "strength",
                                                                                      *columns]) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def flagged_html(flagged: list[dict], most: int = 6) -> str:
    """The first memorised images, each beside the training image it is closest to."""
    rows = []
    for item in flagged[:most]:
        pair = "".join(f"<img alt='{alt}' src='{data_uri(item[key], 160)}' style='margin-right:6px'>"
                       for key, alt in (("generated", "generated"), ("training", "training image"))
                       if Path(str(item.get(key, ""))).is_file())
        text = html.escape(f"{item.get('variant', '')} · {item.get('prompt', '')} · similarity "
                           f"{float(item.get('similarity', 0)):.3f} ({item.get('encoder', '')})")
        rows.append(f"<div style='margin:6px 0'>{pair}<br><small>{text}</small></div>")
    more = f"<p>… and {len(flagged) - most} more in the report</p>" if len(flagged) > most else ""
    return "".join(rows) + more


def show_evaluation(evaluation) -> None:
    """The metrics table, the charts over checkpoints and strengths (two abreast), and the images flagged as
    memorised, each beside its nearest training image."""
    from IPython.display import HTML, display

    if evaluation is None:
        print("No evaluation to show yet.")
        return
    display(HTML(metrics_table_html(evaluation)))
    charts = [(name, path) for name, path in evaluation.charts.items() if Path(path).is_file()]
    display(HTML("<div style='display:flex;flex-wrap:wrap;gap:8px'>" + "".join(
        f"<img alt='{html.escape(name)}' src='{data_uri(path)}' style='width:48%;min-width:320px'>"
        for name, path in charts) + "</div>"))
    if evaluation.flagged:
        print(f"{len(evaluation.flagged)} generated image(s) look memorised (all of them side by side in the report):")
        display(HTML(flagged_html(evaluation.flagged)))
    else:
        print("no generated image is flagged as memorised")


def show_report(evaluation) -> None:
    if evaluation is None:
        print("No report yet: run the evaluation above.")
        return
    size = evaluation.report_path.stat().st_size / 1e6 if evaluation.report_path.is_file() else 0
    print(f"{evaluation.report_path} ({size:.1f} MB, self-contained: opens offline). In Jupyter's file browser: "
          "right-click it, Open in New Browser Tab, or Download.")


def run_model_card(ws: Workspace, choice_form, evaluation, target: str = "hub") -> Path | None:
    """Write the model card (Hub or civitai) from the evaluation; show its start."""
    if evaluation is None:
        print("No model card: run the evaluation first.")
        return None
    try:
        path = Path(write_model_card(ws, choice_form.value.run, evaluation, target=target))
    except (ConfigError, EvaluationError, GenerationError, ValueError, OSError) as exc:
        _explain(exc, "model card")
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    print(f"{path} ({target}):\n" + "\n".join(lines[:25]) + ("\n..." if len(lines) > 25 else ""))
    return path


def run_upload(ws: Workspace, choice_form, upload_form, evaluation):
    """Upload the evaluated model, LoRA, card and samples (token from notebook 00, never shown); an empty repo
    uploads nothing. Then say what has not left this machine yet."""
    from helpers import results
    from helpers.hub.upload import HubUploadError

    done = None
    try:
        choice, target = choice_form.value, upload_form.value
        if not target.repo_id.strip():
            print("nothing uploaded: give a Hub repo above to upload the model, LoRA, card and samples")
        elif evaluation is None:
            print("nothing uploaded: evaluate the run first (the card and samples come from the evaluation)")
        else:
            write_model_card(ws, choice.run, evaluation, target=target.target)
            done = upload_evaluated(ws, choice.run, target.repo_id.strip(), private=target.private,
                                    overwrite=target.overwrite, progress=True)
            print(done.summary() if hasattr(done, "summary") else done)
    except (ConfigError, EvaluationError, HubUploadError, ValueError, OSError) as exc:
        _explain(exc, "upload", "Nothing was reported as uploaded")
        done = None
    results.remind(ws)
    return done
