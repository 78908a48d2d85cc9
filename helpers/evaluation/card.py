"""The model card of an evaluated run: Markdown for the Hub (``README.md`` with YAML metadata) or for civitai's
description: trigger words, the prompt format the captions taught, the settings that worked, the base model,
the training summary and recipe (template + changes), and sample images with their parameters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers.changes import write_text_atomic
from helpers.evaluation.settings import EvaluationError
from helpers.workspace import Workspace

CARD_NAMES = {"hub": "README.md", "civitai": "civitai.md"}
SAMPLES_DIR = "samples"


def recipe(config_path: Path) -> tuple[str, dict]:
    """(closest template, {setting: value} where the run's config differs from it)."""
    from helpers.config import build_config, load_config, to_dict
    from helpers.templates import list_templates
    from helpers.training.config import TrainConfig

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
        return out

    run = flat(to_dict(load_config(TrainConfig, config_path)))
    best = ("defaults", {k: v for k, v in run.items() if v != flat(to_dict(TrainConfig())).get(k)})
    for name in list_templates():
        try:
            template = flat(to_dict(build_config(TrainConfig, name)))
        except Exception:  # a template of another config kind
            continue
        changes = {k: v for k, v in run.items() if template.get(k) != v}
        if len(changes) < len(best[1]):
            best = (name, changes)
    return best


def _base_model_id(base: str, ws: Workspace) -> str:
    """The base model's Hub id when its ``model.json`` recorded one, else its name."""
    for folder in (Path(base), ws.models / Path(base).name):
        try:
            source = json.loads((folder / "model.json").read_text(encoding="utf-8")).get("source", "")
        except (OSError, ValueError):
            continue
        if isinstance(source, str) and source.count("/") == 1 and not source.startswith(("/", ".")):
            return source
    return Path(base).stem


def _samples(evaluation: dict, folder: Path, count: int = 4) -> list[tuple[Path, str]]:
    """Copies of the recommended variant's images (new prompts first) in ``folder/samples``, with parameters."""
    from helpers.generation.parameters import read_png_parameters

    rec = evaluation.get("recommendation")
    variants = evaluation["variants"]
    if not rec:
        return []
    column = next(i for i, v in enumerate(variants) if v["checkpoint"] == rec["checkpoint"]
                  and v["strength"] == rec["strength"])
    picked = []
    for name in ("new", "trigger", "captions"):
        cells = evaluation["images"].get(name, [])
        for row in range(len(cells) // max(1, len(variants))):
            files = cells[row * len(variants) + column]
            if files:
                picked.append(Path(files[0]))
    out_dir = folder / SAMPLES_DIR
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    out = []
    for i, src in enumerate(picked[:count]):
        dst = out_dir / f"sample-{i + 1:02d}.png"
        shutil.copy2(src, dst)
        out.append((dst, read_png_parameters(dst) or ""))
    return out


def card_text(ws: Workspace, run_name: str, evaluation: dict, target: str, samples: list[tuple[Path, str]],
              folder: Path) -> str:
    from helpers.evaluation.report import training_summary

    run = ws.run(run_name)
    rec = evaluation.get("recommendation") or {}
    triggers = evaluation.get("triggers") or []
    base_id = _base_model_id(evaluation["base_model"], ws)
    s = evaluation["settings"]
    template, changes = recipe(run.config)
    captions = evaluation.get("prompts", {}).get("captions", [])
    lines = []
    if target == "hub":
        meta = ["---", "library_name: diffusers", "pipeline_tag: text-to-image",
                "tags:", "- text-to-image", "- stable-diffusion", "- lora", "- tunebook"]
        if "/" in base_id:
            meta.append(f"base_model: {base_id}")
        if triggers:
            meta.append(f"instance_prompt: {json.dumps(', '.join(triggers))}")
        lines += [*meta, "---", ""]
    lines += [f"# {run_name}", ""]
    lines += [f"Fine-tuned from **{base_id}** with tunebook" + ("; the LoRA was extracted from the recommended "
                                                              "checkpoint." if rec.get("lora") else "."), ""]
    lines += ["## Trigger words", "", (", ".join(f"`{t}`" for t in triggers) if triggers else
                                        "none: the model was trained without a trigger word"), ""]
    lines += ["## How to prompt", ""]
    lines += [prompt_format(captions, triggers), ""]
    if captions:
        lines += ["Training captions looked like this; prompts in the same form work best:", "",
                  *[f"    {c}" for c in captions[:3]], ""]
    lines += ["## Recommended", ""]
    if rec:
        lora = Path(rec["lora"]).name if rec.get("lora") else Path(rec["model"]).name
        lines += [f"- **{rec['checkpoint']}**, strength **{rec['strength']:g}** (`{lora}`)",
                  f"- why: {rec['sentence']}"]
    lines += [f"- settings that worked: {s['steps']} steps, sampler {s['sampler']}, CFG {s['cfg']:g}"
              + (f", {s['width']}×{s['height']}" if s.get("width") else ""), ""]
    lines += ["## Evaluation", "", "| checkpoint | strength | " + " | ".join(_metric_names(evaluation)) + " |",
              "|---|---|" + "---|" * len(_metric_names(evaluation))]
    for v in evaluation["variants"]:
        lines.append(f"| {v['checkpoint']} | {v['strength']:g} | " + " | ".join(
            _cell(v["metrics"].get(k)) for k in _metric_names(evaluation)) + " |")
    lines += ["", "## Training", ""]
    lines += [f"- {k}: {v}" for k, v in training_summary(run).items()]
    lines += [f"- recipe: template `{template}`" + (" with these changes:" if changes else " unchanged")]
    lines += [f"  - `{k}` = `{v}`" for k, v in sorted(changes.items())]
    lines += ["", "## Samples", ""]
    for path, params in samples:
        rel = path.relative_to(folder).as_posix()
        lines += [f"![sample]({rel})", "", "```", params.strip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def prompt_format(captions: list[str], triggers: list[str]) -> str:
    """One line on how to write prompts: where the trigger went in the captions, tags or sentences."""
    if not captions:
        return "Describe the picture; " + (f"put `{triggers[0]}` first." if triggers else "no trigger word is needed.")
    first = [c.split(",")[0].strip().lower() for c in captions]
    leading = [t for t in triggers if sum(f == t.lower() for f in first) * 2 >= len(captions)]
    tags = sum(c.count(",") >= 2 and len(c.split(",")[0].split()) <= 4 for c in captions) * 2 >= len(captions)
    style = "comma-separated tags" if tags else "a sentence"
    if leading:
        return f"Start with `{leading[0]}`, then {style} describing the picture."
    if triggers:
        return f"Write {style} describing the picture and include {', '.join(f'`{t}`' for t in triggers)}."
    return f"Write {style} describing the picture."


def _metric_names(evaluation: dict) -> list[str]:
    return sorted({k for v in evaluation["variants"] for k in v["metrics"]})


def _cell(v) -> str:
    return "–" if v is None or v != v else f"{v:.3g}"


def write_model_card(workspace, run_name: str, evaluation=None, *, target: str = "hub") -> Path:
    """Write ``<run>/evaluation/README.md`` (hub) or ``civitai.md`` with copies of sample images beside it."""
    from helpers.evaluation.run import load_evaluation

    if target not in CARD_NAMES:
        raise EvaluationError(f"target {target!r}: 'hub' or 'civitai'")
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace, create=False)
    data = load_evaluation(ws, run_name)  # the evaluation object and metrics.json say the same; the file is
    del evaluation  # what a later session has, so the card is always written from it
    folder = ws.run(run_name).root / "evaluation"
    samples = _samples(data, folder)
    return write_text_atomic(folder / CARD_NAMES[target], card_text(ws, run_name, data, target, samples, folder))
