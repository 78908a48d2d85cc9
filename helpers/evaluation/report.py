"""``<run>/evaluation/report.html``: one page that opens offline on its own (charts, flagged pairs and JPEG previews
of the grid pages inline as data URIs; each preview links to the full-size PNG beside the page): recommendation,
metric table, charts, grids, flagged pairs, training summary."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from helpers.changes import write_text_atomic

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.best{background:#e6f4ea;font-weight:bold}
.rec{font-size:1.2em;background:#eef4ff;padding:.8em;border-left:4px solid #4c72b0}.note{color:#8a5a00}
img{max-width:100%}.pair img{height:200px;margin-right:8px}.charts img{width:48%}"""

GRID_PREVIEW_SIDE = 2048  # px, long side of a grid's preview inside the page


def data_uri(image, max_side: int = 0, fmt: str = "PNG") -> str:
    """A PIL image (or a file) as a data URI, optionally shrunk to ``max_side``."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        with Image.open(image) as im:
            image = im.convert("RGB")
    if max_side and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def training_summary(run) -> dict:
    """Steps, time, images/s, peak VRAM and cost of the run (summary.json, status.json and the log)."""
    from helpers.evaluation.inputs import read_log_events

    out: dict = {}
    for path in (run.status, run.summary):
        try:
            out.update(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            pass
    events = read_log_events(run)
    start = next((e["time"] for e in events if e["event"] == "start"), None)
    end = next((e["time"] for e in reversed(events) if e["event"] in ("finished", "stopped")), None)
    keep = {"steps": out.get("steps", out.get("step")), "epochs": out.get("epochs"),
            "training time (h)": round((end - start) / 3600, 4) if start and end else out.get("training_hours"),
            "images/s": out.get("images_per_s"), "peak VRAM (GB)": out.get("peak_memory_gb"),
            "cost": out.get("cost"), "final loss": out.get("loss"), "state": out.get("state")}
    return {k: v for k, v in keep.items() if v is not None}


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else f"{v:.1f}" if isinstance(v, float) else str(v)


def metric_table(variants: list, scored: dict) -> str:
    keys = sorted({k for v in variants for k in scored[v.key]})
    head = "<tr><th>checkpoint</th><th>strength</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>"
    best = {}
    for k in keys:
        values = [scored[v.key][k] for v in variants if k in scored[v.key] and not math.isnan(scored[v.key][k])]
        if values:
            best[k] = (min if k.startswith(("centroid", "memorised")) else max)(values)
    rows = []
    for v in variants:
        cells = "".join(f"<td class='{'best' if k in scored[v.key] and scored[v.key][k] == best.get(k) else ''}'>"
                        f"{_fmt(scored[v.key].get(k))}</td>" for k in keys)
        rows.append(f"<tr><td>{html.escape(v.checkpoint)}</td><td>{v.strength:g}</td>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def write_report(evaluation, inputs, variants: list, sets: dict, settings) -> Path:
    from PIL import Image

    folder = evaluation.folder
    scored = {v.key: evaluation.metrics[(v.checkpoint, v.strength)] for v in variants}
    rec = evaluation.recommendation
    parts = [f"<h1>Evaluation of run {html.escape(evaluation.run)}</h1>",
             f"<p>base model {html.escape(Path(inputs.base).name)} · dataset {html.escape(Path(inputs.dataset).name)}"
             f" · triggers: {html.escape(', '.join(inputs.triggers) or 'none')} · {settings.images_per_prompt} images "
             f"per prompt, {settings.steps} steps, {html.escape(settings.sampler)}, CFG {settings.cfg:g}, seed "
             f"{settings.seed}</p>"]
    parts.append(f"<p class='rec'><b>Recommended:</b> {html.escape(rec.sentence)}</p>" if rec else
                 "<p class='rec'>No checkpoint to recommend (only the base model was evaluated).</p>")
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in evaluation.notes]
    parts += ["<h2>Metrics</h2><div style='overflow-x:auto'>", metric_table(variants, scored), "</div>"]
    parts.append("<h2>Charts</h2><div class='charts'>" + "".join(
        f"<img alt='{html.escape(k)}' src='{data_uri(p)}'>" for k, p in evaluation.charts.items()) + "</div>")
    parts.append("<h2>Grids</h2>")
    for name, pages in evaluation.grids.items():
        parts.append(f"<h3>{html.escape(name)}</h3>")
        # a JPEG preview inside the page (it opens alone, e.g. mailed or downloaded), the full PNG beside it
        parts += [f"<a href='{p.relative_to(folder).as_posix()}'><img alt='{html.escape(name)} grid' "
                  f"src='{data_uri(p, GRID_PREVIEW_SIDE, 'JPEG')}'></a>" for p in pages if p.is_file()]
    parts.append(f"<h2>Memorisation (similarity ≥ {settings.memorisation_threshold:g})</h2>")
    if not evaluation.flagged:
        parts.append("<p>No generated image is that close to a training image.</p>")
    for f in evaluation.flagged[:100]:
        with Image.open(f["generated"]) as g, Image.open(f["training"]) as t:
            gen, train = data_uri(g.convert("RGB"), 256, "JPEG"), data_uri(t.convert("RGB"), 256, "JPEG")
        parts.append(f"<div class='pair'><p>{html.escape(f['variant'])} · {html.escape(f['prompt'][:120])} · "
                     f"similarity {f['similarity']:.3f} ({f['encoder']}) · training image "
                     f"{html.escape(Path(f['training']).name)}</p><img alt='generated' src='{gen}'>"
                     f"<img alt='training image' src='{train}'></div>")
    summary = training_summary(inputs.run)
    parts.append("<h2>Training</h2><table>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in summary.items()) + "</table>")
    parts.append("<h2>Prompts</h2>" + "".join(
        f"<h3>{html.escape(n)}</h3><ol>" + "".join(f"<li>{html.escape(s.prompt)}</li>" for s, _ in p) + "</ol>"
        for n, p in sets.items()))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Evaluation {html.escape(evaluation.run)}"
            f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    return write_text_atomic(evaluation.report_path, page)
