"""LoRA extraction: factorise (tuned - base) per layer into a kohya-format LoRA, streaming, with a fidelity report.

Owns ``ExtractConfig`` and ``extract_lora``. Both models are read one tensor at a time (memory-mapped
safetensors through ``helpers.models.open_checkpoint``); deltas are queued in float32 up to a small budget,
factorised in same-shape batches on the GPU when there is one, and only the low-rank factors are kept. Each
layer is decided on its own: a layer whose largest change is at most ``min_diff`` (U-Net) or ``te_min_diff``
(text encoders) is skipped and listed in the report with the reason, and the report says plainly when a text
encoder is unchanged or nearly so (sd-scripts silently drops both text encoders below one global threshold).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from helpers.config import option
from helpers.lora import naming, report, svd
from helpers.lora.formats import PRECISIONS, backup_existing, kohya_metadata, write_lora

# queue this many bytes of float32 deltas before factorising a batch (bounds peak memory, keeps batches big)
BATCH_BYTES = 192 * 1024 * 1024
NEARLY_UNCHANGED = 1e-4  # a text encoder whose |delta| / |W| is below this barely moved


class ExtractError(ValueError):
    """The two models cannot be compared (wrong pair, missing layers); the message says what to do."""


@dataclass
class ExtractConfig:
    """Settings of one extraction (the form in notebook 05 and ``python -m helpers.lora extract``)."""

    format_version: ClassVar[int] = 1

    base: str = option("", help="the model the fine-tune started from (single .safetensors or diffusers folder)",
                       kind="path", label="base model")
    tuned: str = option("", help="the fine-tuned model (single .safetensors, diffusers folder, or a training "
                        "checkpoint)", kind="path", label="tuned model")
    out: str = option("", help="where to write the LoRA (.safetensors); empty: beside the tuned model",
                      kind="path", label="output file")
    rank: int = option(128, help="LoRA rank (dim) for linear and 1x1 layers; the guide uses 128 "
                       "(about 1 GB for SDXL in fp16)", min=1, max=4096)
    conv_rank: int = option(0, help="rank for the U-Net's 3x3 convolutions (LoCon); 0 leaves the resnets out, "
                            "as sd-scripts does without --conv_dim", min=0, max=4096)
    precision: Literal["fp16", "bf16", "fp32"] = option("fp16", help="dtype of the saved factors")
    min_diff: float = option(1e-6, help="skip a U-Net layer whose largest absolute change is at most this "
                             "(1e-6 keeps every layer that training touched)", min=0.0, group="advanced")
    te_min_diff: float = option(1e-6, help="the same for text-encoder layers (sd-scripts' 0.01 default drops "
                                "fine-tuned text encoders; the guide adds four zeros)", min=0.0,
                                group="advanced")
    clamp_quantile: float = option(1.0, help="clip factor entries above this quantile, as sd-scripts' "
                                   "--clamp_quantile (default there 0.99, which costs fidelity); 1.0 = off",
                                   min=0.5, max=1.0, group="advanced")
    solver: Literal["subspace", "gram", "randomized", "exact"] = option(
        "subspace", help="subspace: block subspace iteration, within 0.1 pp of the optimum per layer (default, "
        "fastest; the rank table stops at the rank); gram: exact top-r via the Gram matrix, full spectrum; "
        "randomized: plain sketch, lower fidelity on flat spectra; exact: full SVD (slow reference)",
        group="advanced")
    device: str = option("auto", help="where to factorise: auto (GPU when present), cpu, cuda, cuda:1 ...",
                         group="advanced")
    allow_pickle: bool = option(False, help="accept .ckpt/.pt model files (pickle can run code: only for "
                                "files you trust)", group="advanced")

    def check(self) -> dict[str, str]:
        problems = {}
        if not self.base:
            problems["base"] = "choose the base model"
        if not self.tuned:
            problems["tuned"] = "choose the tuned model"
        if self.out and not self.out.endswith(".safetensors"):
            problems["out"] = "the LoRA file name must end with .safetensors"
        return problems


def rounding_eps(a: torch.dtype, b: torch.dtype) -> float:
    """Relative spacing of the coarser of two float dtypes (0 when both are float32 or finer).

    A layer whose every change is within this fraction of its weight only differs by saving in another
    precision (an fp16 base against a bf16 fine-tune differs *everywhere* by ~0.4 %): nothing to extract.
    """
    coarse = [torch.finfo(d).eps for d in (a, b) if d.is_floating_point and torch.finfo(d).bits < 32]
    return max(coarse, default=0.0)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_output(tuned: str | os.PathLike, rank: int) -> Path:
    tuned = Path(tuned)
    stem = tuned.stem if tuned.is_file() else tuned.name
    return tuned.parent / f"{stem}-lora-r{rank}.safetensors"


@dataclass
class _Pending:
    target: naming.Target
    delta: torch.Tensor  # (out, in*k*k) float32
    rank: int
    row: dict  # this layer's report row, completed after factorising


def _flush(pending: list[_Pending], device: torch.device, solver: str, clamp_quantile: float,
           out_dtype: torch.dtype, tensors: dict) -> None:
    """Factorise queued deltas in same-shape batches and store their factors and report rows."""
    groups: dict[tuple, list[_Pending]] = {}
    for p in pending:
        groups.setdefault((tuple(p.delta.shape), p.rank), []).append(p)
    for (_, rank), items in groups.items():
        stack = torch.stack([p.delta for p in items]).to(device)
        results = svd.factorise_batch(stack, rank, solver=solver, clamp_quantile=clamp_quantile,
                                      out_dtype=out_dtype)
        del stack
        for p, f in zip(items, results, strict=True):
            t = p.target
            k = f.up.shape[1]
            up, down = f.up, f.down
            if len(t.shape) == 4:  # conv: up (out, k, 1, 1), down (k, in, kh, kw) as sd-scripts writes them
                up = up.reshape(t.shape[0], k, 1, 1)
                down = down.reshape(k, *t.shape[1:])
            tensors[f"{t.lora_name}.lora_up.weight"] = up.contiguous()
            tensors[f"{t.lora_name}.lora_down.weight"] = down.contiguous()
            tensors[f"{t.lora_name}.alpha"] = torch.tensor(float(k), dtype=out_dtype)  # alpha = rank: scale 1
            complete = f.singular_values.numel() >= min(t.matrix_shape)
            p.row.update(rank=k, kept=f.kept, curve=svd.energy_curve(f.singular_values, f.total_energy,
                                                                     report.CURVE_RANKS, complete))
    pending.clear()


def extract_lora(base: str | os.PathLike, tuned: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 rank: int = 128, conv_rank: int = 0, precision: str = "fp16", min_diff: float = 1e-6,
                 te_min_diff: float = 1e-6, clamp_quantile: float = 1.0, solver: str = "subspace",
                 device: str = "auto", allow_pickle: bool = False, progress: bool = True) -> dict:
    """Extract a LoRA from ``tuned - base`` and write it with its fidelity report; returns the report.

    The report (also saved as ``<out>.fidelity.json``) holds per-layer kept energy, skipped layers with the
    reason, per-component summaries (text-encoder status in words) and the "rank r keeps X %" table.
    """
    from tqdm.auto import tqdm

    from helpers.models import open_checkpoint

    if rank < 1 or conv_rank < 0:
        raise ExtractError(f"rank must be >= 1 and conv rank >= 0 (got {rank}, {conv_rank})")
    if precision not in PRECISIONS:
        raise ExtractError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if solver not in svd.SOLVERS:
        raise ExtractError(f"solver must be one of {', '.join(svd.SOLVERS)}, got {solver!r}")
    out = Path(out) if out else default_output(tuned, rank)
    out_dtype = PRECISIONS[precision]
    dev = pick_device(device)
    base_ck = open_checkpoint(base, allow_pickle=allow_pickle)
    tuned_ck = open_checkpoint(tuned, allow_pickle=allow_pickle)
    try:
        if base_ck.arch != tuned_ck.arch:
            raise ExtractError(f"the models are different architectures: base {base} is {base_ck.arch}, tuned "
                               f"{tuned} is {tuned_ck.arch}; pick the base model the fine-tune started from")
        arch = base_ck.arch
        targets = naming.list_targets(base_ck, with_conv=conv_rank > 0)
        modules: list[dict] = []
        components: dict[str, dict] = {}
        tensors: dict[str, torch.Tensor] = {}
        pending: list[_Pending] = []
        queued = 0
        bar = tqdm(targets, desc="extract", unit="layer", disable=not progress)
        for t in bar:
            comp = components.setdefault(t.component, {"layers": 0, "extracted": 0, "skipped": 0,
                                                       "max_abs_change": 0.0, "delta_energy": 0.0,
                                                       "weight_energy": 0.0, "missing_in_tuned": 0,
                                                       "rounding_only": 0})
            comp["layers"] += 1
            row = {"name": t.lora_name, "component": t.component, "module": t.module, "shape": list(t.shape)}
            modules.append(row)
            delta = _layer_change(t, base_ck, tuned_ck, comp, row, min_diff if t.component == "unet" else te_min_diff)
            if delta is None:
                continue
            comp["extracted"] += 1
            pending.append(_Pending(t, delta.reshape(t.matrix_shape), conv_rank if t.is_conv3x3 else rank, row))
            queued += delta.numel() * 4
            if queued >= BATCH_BYTES:
                _flush(pending, dev, solver, clamp_quantile, out_dtype, tensors)
                queued = 0
                base_ck.close(), tuned_ck.close()  # drop the memory maps: their pages count as our RSS
        _flush(pending, dev, solver, clamp_quantile, out_dtype, tensors)
        bar.close()
        prediction = tuned_ck.prediction
    finally:
        base_ck.close()
        tuned_ck.close()
    if not tensors:
        raise ExtractError(f"no layer differs between {base} and {tuned} (largest change <= min_diff): "
                           "is the tuned model really a fine-tune of this base? Nothing was written.")
    settings = {"rank": rank, "conv_rank": conv_rank, "precision": precision, "min_diff": min_diff,
                "te_min_diff": te_min_diff, "clamp_quantile": clamp_quantile, "solver": solver, "device": str(dev)}
    return _write_extraction(out, tensors, modules, components, arch=arch, prediction=prediction, base=base,
                             tuned=tuned, settings=settings)


def _layer_change(t, base_ck, tuned_ck, comp: dict, row: dict, threshold: float) -> torch.Tensor | None:
    """``tuned - base`` of one target layer in float32, or None (with the reason in ``row``) when it is skipped:
    missing in the tuned model, unchanged, or changed only by float rounding between the files' dtypes."""
    if t.component not in tuned_ck.components() or t.weight_key not in tuned_ck.keys(t.component):
        comp["missing_in_tuned"] += 1
        comp["skipped"] += 1
        row["skipped"] = "missing in the tuned model"
        return None
    tuned_shape = tuple(tuned_ck.shape(t.component, t.weight_key))
    if tuned_shape != t.shape:
        raise ExtractError(f"{t.component} {t.weight_key}: base has shape {t.shape}, tuned has "
                           f"{tuned_shape}; these are not the same model family")
    w = base_ck.get(t.component, t.weight_key).float()
    delta = tuned_ck.get(t.component, t.weight_key).float().sub_(w)
    # row norms in float32 summed in float64 (svd.squared_norm): exact enough, no float64 copies
    max_abs = float(torch.linalg.vector_norm(delta, ord=float("inf"))) if delta.numel() else 0.0
    energy = float(svd.squared_norm(delta.reshape(delta.shape[0], -1))) if delta.numel() else 0.0
    w_energy = float(svd.squared_norm(w.reshape(w.shape[0], -1))) if w.numel() else 0.0
    eps = rounding_eps(base_ck.dtype(t.component, t.weight_key), tuned_ck.dtype(t.component, t.weight_key))
    rounding_only = (eps > 0 and 0 < max_abs <= eps * float(torch.linalg.vector_norm(w, ord=float("inf")))
                     and bool((delta.abs() <= eps * w.abs()).all()))
    comp["max_abs_change"] = max(comp["max_abs_change"], max_abs)
    comp["delta_energy"] += energy
    comp["weight_energy"] += w_energy
    row.update(max_abs_change=max_abs, relative_change=math.sqrt(energy / w_energy) if w_energy else 0.0,
               delta_energy=energy)
    if max_abs <= threshold or rounding_only:
        comp["skipped"] += 1
        comp["rounding_only"] += int(max_abs > threshold)
        row["skipped"] = (f"unchanged (max |change| {max_abs:.3g} <= {threshold:g})" if max_abs <= threshold
                          else "unchanged (differences are only float rounding between the two files' dtypes)")
        return None
    return delta


def _write_extraction(out: Path, tensors: dict, modules: list[dict], components: dict, *, arch: str,
                      prediction: str, base, tuned, settings: dict) -> dict:
    """Write the LoRA (earlier files kept as backups) and its fidelity report; returns the report."""
    rank, conv_rank = settings["rank"], settings["conv_rank"]
    summary = report.summarise_extraction(modules, components, te_min_diff=settings["te_min_diff"],
                                          nearly_unchanged=NEARLY_UNCHANGED)
    network_args = {"conv_dim": str(conv_rank), "conv_alpha": str(float(conv_rank))} if conv_rank else {}
    extra = {"tunebook.extract": json.dumps({"base": Path(base).name, "tuned": Path(tuned).name,
                                             "solver": settings["solver"],
                                             "clamp_quantile": settings["clamp_quantile"],
                                             "kept_energy": summary["overall"]["kept_energy"]})}
    metadata = kohya_metadata(arch, prediction, rank, float(rank), network_args, out.stem, extra)
    backups = backup_existing(out, report.report_path(out))
    write_lora(out, tensors, metadata)
    result = {"kind": "extract", "file": str(out), "size_bytes": out.stat().st_size, "arch": arch,
              "base": str(base), "tuned": str(tuned), "settings": settings, **summary, "modules": modules}
    if backups:
        result.setdefault("messages", []).append("previous files kept as " + ", ".join(b.name for b in backups))
    report.write_report(result, report.report_path(out))
    return result


def extract_from_config(cfg: ExtractConfig, progress: bool = True) -> dict:
    """Run :func:`extract_lora` with a validated :class:`ExtractConfig`."""
    values = dataclasses.asdict(cfg)
    base, tuned, out = values.pop("base"), values.pop("tuned"), values.pop("out") or None
    return extract_lora(base, tuned, out, progress=progress, **values)
