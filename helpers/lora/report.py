"""Fidelity reports for extracted and resized LoRAs: what was kept, what was skipped and why, as JSON and charts.

Owns the summary maths (energy-weighted kept fraction per component and overall; the "rank r keeps X %"
table), the wording of the text-encoder status, the JSON file written beside each LoRA
(``<name>.fidelity.json``), and the charts the notebook shows.

"Kept energy" of a layer = ``1 - |D - up @ down|^2 / |D|^2`` for its weight delta D (squared Frobenius norms),
measured on the factors as saved. Overall figures weight each layer by its delta energy, so a layer that
barely changed cannot hide a layer that changed a lot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers.changes import write_text_atomic

CURVE_RANKS = [1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
COMPONENT_NAMES = {"unet": "U-Net", "te1": "text encoder 1", "te2": "text encoder 2"}


def report_path(lora_path: str | os.PathLike) -> Path:
    """``foo.safetensors`` -> ``foo.fidelity.json`` (same folder)."""
    p = Path(lora_path)
    return p.with_name(p.stem + ".fidelity.json")


def write_report(result: dict, path: str | os.PathLike) -> Path:
    return write_text_atomic(path, json.dumps(result, indent=1, sort_keys=False) + "\n")


def read_report(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def weighted_kept(rows: list[dict]) -> float | None:
    """Energy-weighted kept fraction over layers that have ``kept`` and ``delta_energy``."""
    rows = [r for r in rows if "kept" in r]
    total = sum(r["delta_energy"] for r in rows)
    if not rows:
        return None
    if total <= 0:
        return 1.0
    return sum(r["kept"] * r["delta_energy"] for r in rows) / total


def rank_table(rows: list[dict]) -> list[dict]:
    """``[{"rank": r, "kept_energy": x}, …]``: what one rank r for every layer would keep (energy-weighted).

    Built from the singular values each layer's solver produced; a rank is listed only when every extracted
    layer's spectrum reaches it (always, for the default gram solver).
    """
    rows = [r for r in rows if r.get("curve")]
    if not rows:
        return []
    total = sum(r["delta_energy"] for r in rows) or 1.0
    table = []
    for rank in CURVE_RANKS:
        values = [r["curve"].get(rank, r["curve"].get(str(rank))) for r in rows]
        if any(v is None for v in values):
            break
        table.append({"rank": rank, "kept_energy": sum(v * r["delta_energy"] for v, r in zip(values, rows, strict=True)) / total})
        if all(v >= 1.0 - 1e-9 for v in values):
            break  # every layer is at full rank: larger ranks add nothing
    return table


def component_status(name: str, comp: dict, te_min_diff: float, nearly_unchanged: float) -> str:
    """One sentence on what happened to a component (the explicit text-encoder report)."""
    label = COMPONENT_NAMES.get(name, name)
    rel = (comp["delta_energy"] / comp["weight_energy"]) ** 0.5 if comp["weight_energy"] else 0.0
    comp["relative_change"] = rel
    if comp.get("missing_in_tuned") == comp["layers"]:
        return f"{label}: not in the tuned model, so not in the LoRA"
    if comp["extracted"] == 0 and comp.get("rounding_only"):
        return (f"{label}: differs from the base only by float rounding (the files were saved in different "
                "precisions), so it is NOT in the LoRA")
    if comp["extracted"] == 0:
        return (f"{label}: unchanged (largest change {comp['max_abs_change']:.3g} <= min diff "
                f"{te_min_diff if name != 'unet' else 'threshold'}), so it is NOT in the LoRA"
                + (" — if it was trained, lower --te-min-diff" if name != "unet" and comp["max_abs_change"] > 0
                   else ""))
    note = ""
    if name != "unet" and rel < nearly_unchanged:
        note = f" — nearly unchanged (|change|/|weights| = {rel:.2g}); it will barely affect images"
    skipped = f", {comp['skipped']} unchanged layers skipped" if comp["skipped"] else ""
    return f"{label}: {comp['extracted']} of {comp['layers']} layers extracted{skipped}{note}"


def summarise_extraction(modules: list[dict], components: dict[str, dict], te_min_diff: float,
                         nearly_unchanged: float) -> dict:
    """Overall and per-component kept energy, skipped layers, the rank table and status sentences."""
    extracted = [m for m in modules if "kept" in m]
    messages = []
    for name, comp in components.items():
        rows = [m for m in extracted if m["component"] == name]
        comp["kept_energy"] = weighted_kept(rows)
        comp["status"] = component_status(name, comp, te_min_diff, nearly_unchanged)
        messages.append(comp["status"])
    all_energy = sum(m.get("delta_energy", 0.0) for m in modules)
    kept_energy = sum(m["kept"] * m["delta_energy"] for m in extracted)
    overall = {
        "kept_energy": weighted_kept(extracted),
        "kept_of_all_change": kept_energy / all_energy if all_energy else 1.0,  # skipped layers count as lost
        "mean_layer_kept": sum(m["kept"] for m in extracted) / len(extracted) if extracted else None,
        "min_layer_kept": min((m["kept"] for m in extracted), default=None),
        "layers_extracted": len(extracted),
        "layers_skipped": len(modules) - len(extracted),
    }
    return {"overall": overall, "components": components, "messages": messages,
            "rank_table": rank_table(extracted),
            "skipped": [{"name": m["name"], "reason": m["skipped"]} for m in modules if "skipped" in m]}


def format_summary(result: dict) -> str:
    """A few lines for a terminal or a notebook cell."""
    o = result["overall"]
    lines = [f"{result['kind']}: {result['file']} ({result['size_bytes'] / 2**20:.1f} MiB)"]
    if o.get("kept_energy") is not None:
        lines.append(f"kept {100 * o['kept_energy']:.2f} % of the change's energy over {o['layers_extracted']} "
                     f"layers (worst layer {100 * o['min_layer_kept']:.2f} %), {o['layers_skipped']} skipped")
    lines += ["  " + m for m in result.get("messages", [])]
    table = result.get("rank_table") or []
    if table:
        lines.append("  rank r keeps: " + ", ".join(f"{t['rank']}: {100 * t['kept_energy']:.1f} %" for t in table))
    return "\n".join(lines)


def fidelity_chart(result: dict):
    """Line chart: energy kept versus rank (the resize guide), one line per component and overall."""
    from helpers.ui.charts import line_chart

    series = {"all layers": [(t["rank"], 100 * t["kept_energy"]) for t in result.get("rank_table", [])]}
    for comp in ("unet", "te1", "te2"):
        rows = [m for m in result.get("modules", []) if m["component"] == comp and m.get("curve")]
        table = rank_table(rows)
        if table and len(result.get("components", {})) > 1:
            series[COMPONENT_NAMES[comp]] = [(t["rank"], 100 * t["kept_energy"]) for t in table]
    chosen = result.get("settings", {}).get("rank")
    title = "Energy of the weight change kept, by LoRA rank" + (f" (extracted at {chosen})" if chosen else "")
    return line_chart(series, title=title, xlabel="rank", ylabel="kept energy (%)")


def layer_chart(result: dict):
    """Histogram of per-layer kept energy (where the extraction lost most)."""
    from helpers.ui.charts import histogram

    values = [100 * m["kept"] for m in result.get("modules", []) if "kept" in m]
    return histogram(values, bins=20, title=f"Kept energy per layer ({len(values)} layers)",
                     xlabel="kept energy (%)", ylabel="layers")
