"""Choosing a checkpoint and strength from the metrics, and the charts that show why.

The rule (documented in docs/evaluation.md; every threshold is an ``EvalSettings`` field):

1. candidates are the checkpoints at strengths above 0 (strength 0 is the base model);
2. a candidate passes when it has at most ``max_flagged`` memorised images, fidelity (DINOv2 nearest-neighbour
   similarity, else CLIP's) within ``fidelity_tolerance`` of the best candidate's (the best among those that do
   not memorise: copying training images is the cheapest fidelity), text alignment on new prompts
   (else on any prompt set) at least the base model's plus ``alignment_margin``, and base preservation at least
   ``min_preservation``;
3. of those that pass, the one with the best text alignment on new prompts wins (ties: the earlier epoch, then
   the lower strength: less overfitting, more room in prompts);
4. when none passes every test, the tests are relaxed in the order preservation, alignment, fidelity (memorisation
   last), and the sentence says which ones the pick fails.
"""

from __future__ import annotations

import math
from pathlib import Path

from helpers.evaluation.outcome import Recommendation
from helpers.evaluation.settings import EvalSettings

CHART_METRICS = {
    "clip_score_captions": "CLIP score, training captions", "clip_score_new": "CLIP score, new prompts",
    "clip_score_trigger": "CLIP score, trigger alone", "fidelity_dino": "fidelity (DINOv2 nearest similarity)",
    "fidelity_clip": "fidelity (CLIP nearest similarity)", "centroid_distance_dino": "centroid distance (DINOv2)",
    "centroid_distance_clip": "centroid distance (CLIP)", "vendi": "diversity (Vendi score per prompt)",
    "preservation": "base preservation (similarity to the base's images)", "memorised": "memorised images",
    "face_likeness": "face likeness (SFace similarity)",
}


def _num(m: dict, key: str) -> float | None:
    v = m.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def fidelity_key(scored: dict) -> str | None:
    keys = {k for m in scored.values() for k in m}
    return next((k for k in ("fidelity_dino", "fidelity_clip") if k in keys), None)


def alignment_key(scored: dict) -> str | None:
    keys = {k for m in scored.values() for k in m}
    return next((k for k in ("clip_score_new", "clip_score_captions", "clip_score_trigger") if k in keys), None)


def _tests(m: dict, base: dict, best_fid: float | None, fkey, akey, s: EvalSettings) -> dict[str, tuple[bool, str]]:
    """{test: (passed, phrase)} for one candidate."""
    out = {}
    flagged = int(_num(m, "memorised") or 0)
    out["memorisation"] = (flagged <= s.max_flagged, "no memorised images" if flagged == 0 else
                           f"{flagged} memorised image{'s' if flagged > 1 else ''}")
    fid = _num(m, fkey) if fkey else None
    if fid is not None and best_fid:
        gap = (best_fid - fid) / abs(best_fid)
        out["fidelity"] = (gap <= s.fidelity_tolerance, "the best fidelity" if gap <= 1e-9 else
                           "fidelity level with the best" if gap < 0.0005 else
                           f"fidelity within {gap * 100:.1f} % of the best" if gap <= s.fidelity_tolerance else
                           f"fidelity {gap * 100:.1f} % below the best")
    a, b = (_num(m, akey), _num(base, akey)) if akey else (None, None)
    if a is not None and b is not None:
        what = "text alignment" + (" on new prompts" if akey == "clip_score_new" else "")
        ok = a >= b + s.alignment_margin
        out["alignment"] = (ok, f"{what} {a:.1f} {'above' if a > b else 'at' if a == b else 'below'} the base "
                                f"model's {b:.1f}")
    p = _num(m, "preservation")
    if p is not None:
        out["preservation"] = (p >= s.min_preservation, f"base preservation {p:.2f}")
    return out


def recommend(variants: list, scored: dict[str, dict], settings: EvalSettings):
    """The :class:`Recommendation` (or None when no checkpoint was evaluated at a strength above 0)."""
    candidates = [v for v in variants if v.checkpoint != "base model"]
    if not candidates:
        return None
    fkey, akey = fidelity_key(scored), alignment_key(scored)
    # the bar is set by candidates that do not memorise (copying training images is the easiest "fidelity")
    clean = [v for v in candidates if (_num(scored[v.key], "memorised") or 0) <= settings.max_flagged] or candidates
    fids = [x for v in clean if (x := _num(scored[v.key], fkey or "")) is not None]
    best_fid = max(fids) if fids else None
    base = scored.get("base", {})
    tests = {v.key: _tests(scored[v.key], base, best_fid, fkey, akey, settings) for v in candidates}

    def order(v):
        a = _num(scored[v.key], akey or "")
        return (-(a if a is not None else -1e9), v.epoch if v.epoch is not None else 10**9, v.strength)

    relaxed: list[str] = []
    pool: list = []
    for drop in ([], ["preservation"], ["preservation", "alignment"], ["preservation", "alignment", "fidelity"],
                 ["preservation", "alignment", "fidelity", "memorisation"]):
        pool = [v for v in candidates if all(ok for name, (ok, _) in tests[v.key].items() if name not in drop)]
        if pool:
            relaxed = drop
            break
    if "memorisation" in relaxed:  # everything memorises: the fewest flagged first
        pool.sort(key=lambda v: (_num(scored[v.key], "memorised") or 0, *order(v)))
    else:
        pool.sort(key=order)
    pick = pool[0]
    t = tests[pick.key]
    phrases = [t[name][1] for name in ("fidelity", "alignment", "memorisation", "preservation") if name in t]
    sentence = f"{pick.checkpoint} at {pick.strength:g}: " + ", ".join(phrases)
    failed = [name for name, (ok, _) in t.items() if not ok]
    if failed:
        sentence += f" (no candidate passed every test; this one fails {', '.join(failed)})"
    return Recommendation(pick.checkpoint, pick.strength, sentence + ".", pick.model, pick.lora,
                          [n for n, (ok, _) in t.items() if ok], failed)


def write_charts(folder: Path, checkpoints: list, variants: list, scored: dict[str, dict]) -> dict[str, Path]:
    """One PNG per metric: value over epochs (x), a line per strength, the base model as a dashed reference."""
    from helpers.ui.charts import line_chart

    folder.mkdir(parents=True, exist_ok=True)
    order = {c.label: i for i, c in enumerate(checkpoints)}
    by_epoch = all(c.epoch is not None for c in checkpoints)
    xs = {c.label: (c.epoch if by_epoch else c.step if c.step is not None else i + 1) for i, c in enumerate(checkpoints)}
    xlabel = "epoch" if by_epoch else "step" if all(c.step is not None for c in checkpoints) else "checkpoint"
    out = {}
    metrics = [k for k in CHART_METRICS if any(k in m for m in scored.values())]
    for key in metrics:
        series: dict[str, list] = {}
        for v in sorted((v for v in variants if v.checkpoint in order), key=lambda v: order[v.checkpoint]):
            value = _num(scored[v.key], key)
            if value is not None:
                series.setdefault(f"strength {v.strength:g}", []).append((xs[v.checkpoint], value))
        base = _num(scored.get("base", {}), key)
        if base is not None and series:
            span = [x for pts in series.values() for x, _ in pts]
            series["base model"] = [(min(span), base), (max(span), base)]
        if not series:
            continue
        image = line_chart(series, title=CHART_METRICS[key], xlabel=xlabel, ylabel=key)
        path = folder / f"{key}.png"
        image.save(path)
        out[key] = path
    return out
