"""What notebook 05 calls: workspace-aware defaults for the forms, run-with-a-message wrappers, result views.

Owns the choice of a sensible base/tuned pair from the workspace (the newest training checkpoint, and the base
model its run started from), and turning a form's value into an extraction or resize that, in a notebook,
explains what is missing instead of raising a traceback.
"""

from __future__ import annotations

from pathlib import Path

import tomllib

from helpers import ledger
from helpers.config import ConfigError
from helpers.lora.extract import ExtractConfig, ExtractError, extract_from_config
from helpers.lora.formats import LoraFileError
from helpers.lora.report import fidelity_chart, format_summary, layer_chart
from helpers.lora.resize import ResizeConfig, resize_from_config
from helpers.ui.errors import stage_failed
from helpers.workspace import RunPaths


def list_checkpoints(ws) -> list[Path]:
    """Training outputs in the workspace, newest first."""
    runs = [RunPaths(ws.runs / name) for name in ws.list_runs()] if ws.runs.is_dir() else []
    found = [p for run in runs for p in run.checkpoints.glob("*.safetensors")]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def list_base_models(ws) -> list[Path]:
    """Models in ``ws.models`` (single files and diffusers folders)."""
    if not ws.models.is_dir():
        return []
    return [p for p in sorted(ws.models.iterdir()) if not p.name.startswith(".")
            and (p.suffix == ".safetensors" or (p / "model_index.json").exists() or (p / "unet").is_dir())]


def run_base(ws, checkpoint: Path) -> Path | None:
    """The base model recorded in the checkpoint's run config, resolved against the workspace."""
    config = RunPaths.of_checkpoint(checkpoint).config
    try:
        base = tomllib.loads(config.read_text(encoding="utf-8")).get("model", {}).get("base_model", "")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    for candidate in (Path(base).expanduser(), ws.models / base):
        if base and candidate.exists():
            return candidate
    return None


def suggest_extract_config(ws, rank: int = 128) -> ExtractConfig:
    """Newest training checkpoint as tuned, its run's base (or the first workspace model) as base."""
    checkpoints = list_checkpoints(ws)
    tuned = checkpoints[0] if checkpoints else None
    base = (run_base(ws, tuned) if tuned else None) or next(iter(list_base_models(ws)), None)
    out = ""
    if tuned is not None:
        out = str(ws.exports / f"{RunPaths.of_checkpoint(tuned).name}-{tuned.stem}-lora-r{rank}.safetensors")
    return ExtractConfig(base=str(base or ""), tuned=str(tuned or ""), out=out, rank=rank)


def describe_choices(ws) -> str:
    models, checkpoints = list_base_models(ws), list_checkpoints(ws)
    lines = [f"base models in {ws.models}: " + (", ".join(p.name for p in models) or "none (use notebook 01)"),
             "training checkpoints: " + (", ".join(f"{RunPaths.of_checkpoint(p).name}/{p.name}" for p in checkpoints[:6])
                                         or "none yet (use notebook 04, or pick any fine-tuned model file)")]
    return "\n".join(lines)


def _explain(exc: Exception, stage: str) -> None:
    if isinstance(exc, ConfigError):
        stage_failed("Fix these fields first:\n  " + "\n  ".join(f"{k}: {v}" for k, v in exc.problems.items()),
                     stage)
    else:
        stage_failed(f"Nothing was written: {exc}", stage)


def run_extract(form) -> dict | None:
    """Extract with the form's settings; on a problem print what to do and return None."""
    try:
        cfg = form.value
        with ledger.stage(cfg.out, "extraction", detail=Path(cfg.tuned).name):  # paid time (helpers.ledger)
            result = extract_from_config(cfg)
    except (ConfigError, ExtractError, LoraFileError, ValueError, OSError) as exc:
        _explain(exc, "extract")
        return None
    print(format_summary(result))
    return result


def show_extract(result: dict | None) -> None:
    """Fidelity chart (kept energy by rank), per-layer histogram and the worst layers."""
    from IPython.display import display

    if not result:
        print("No extraction to show yet.")
        return
    display(fidelity_chart(result))
    display(layer_chart(result))
    worst = sorted((m for m in result["modules"] if "kept" in m), key=lambda m: m["kept"])[:5]
    print("least faithful layers: " + ", ".join(f"{m['name']} {100 * m['kept']:.1f} %" for m in worst))


def suggest_resize_config(result: dict | None, ws, rank: int = 16) -> ResizeConfig:
    """Resize the LoRA just extracted (or the newest one in ``ws.exports``)."""
    source = result["file"] if result else ""
    if not source and ws.exports.is_dir():
        loras = sorted(ws.exports.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
        source = str(loras[0]) if loras else ""
    return ResizeConfig(source=source, rank=rank)


def run_resize(form) -> dict | None:
    try:
        result = resize_from_config(form.value)
    except (ConfigError, LoraFileError, ValueError, OSError) as exc:
        _explain(exc, "resize")
        return None
    before, after = result["source_size_bytes"], result["size_bytes"]
    print(format_summary(result))
    print(f"size: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB ({100 * after / before:.0f} %)")
    return result


def show_resize(result: dict | None) -> None:
    from IPython.display import display

    from helpers.ui.charts import bar_chart

    if not result:
        print("No resize to show yet.")
        return
    display(bar_chart(["source", "resized"], [result["source_size_bytes"] / 2**20, result["size_bytes"] / 2**20],
                      title="LoRA file size", ylabel="MiB"))
    display(layer_chart(result))
