"""LoRA resizing: re-truncate every layer of a LoRA/LyCORIS file to a fixed or dynamically chosen rank.

Owns ``ResizeConfig`` and ``resize_lora``. A LoRA layer's delta is ``scale * up @ down`` with rank r, so its
exact SVD comes from the QR of the two thin factors and an r x r SVD (``svd.product_svd``), never from the
full out x in matrix as in sd-scripts' ``resize_lora.py``. The effective multiplier alpha/rank is kept
(``new alpha = scale * new rank``, as sd-scripts does). LoHa, LoKr, Tucker LoCon and full-diff layers are
converted through their merged delta. Layers with fewer singular values than the target keep all they have;
all-zero layers are dropped and reported (sd-scripts raises IndexError or writes NaN statistics).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from helpers.config import option
from helpers.lora import report, svd
from helpers.lora.formats import PRECISIONS, LoraFileError, backup_existing, read_lora, write_lora


@dataclass
class ResizeConfig:
    """Settings of one resize (the form in notebook 05 and ``python -m helpers.lora resize``)."""

    format_version: ClassVar[int] = 1

    source: str = option("", help="the LoRA to resize (.safetensors)", kind="path", label="LoRA file")
    out: str = option("", help="where to write the result; empty: beside the source, named after the rank",
                      kind="path", label="output file")
    rank: int = option(16, help="new rank (with a dynamic rule: the largest rank allowed); the guide resizes "
                       "to 16", min=1, max=4096)
    conv_rank: int = option(0, help="new rank for 3x3 conv layers; 0 = same as rank", min=0, max=4096)
    dynamic: str = option("", help="choose each layer's rank: sv_fro:0.9 (keep 90 % of the Frobenius norm), "
                          "sv_ratio:20 (keep singular values >= largest/20), sv_cumulative:0.9; empty = fixed",
                          group="advanced")
    precision: Literal["same", "fp16", "bf16", "fp32"] = option("same", help="dtype of the saved factors")
    device: str = option("auto", help="auto (GPU when present), cpu, cuda ...", group="advanced")

    def check(self) -> dict[str, str]:
        problems = {}
        if not self.source:
            problems["source"] = "choose the LoRA to resize"
        if self.dynamic:
            try:
                svd.parse_dynamic(self.dynamic)
            except ValueError as exc:
                problems["dynamic"] = str(exc)
        return problems


def default_output(source: str | os.PathLike, rank: int, dynamic: str = "") -> Path:
    source = Path(source)
    tag = dynamic.replace(":", "-") if dynamic else f"r{rank}"
    stem = source.stem
    for suffix in ("-r",):  # foo-lora-r128 -> foo-lora-r16
        if suffix in stem and stem.rsplit(suffix, 1)[1].isdigit():
            stem = stem.rsplit(suffix, 1)[0]
    return source.with_name(f"{stem}-{tag}.safetensors")


# layer-name endings of the U-Nets' 3x3 convs (sd-scripts original-layout and diffusers names)
_CONV3X3_NAMES = ("_conv1", "_conv2", "_in_layers_2", "_out_layers_3", "_op", "_downsamplers_0_conv",
                  "_upsamplers_0_conv", "_conv_in", "_conv_out", "_input_blocks_0_0", "_out_2")
_UPSAMPLER = re.compile(r"_output_blocks_\d+_[12]_conv$")


def weight_shape(name: str, delta: torch.Tensor) -> tuple[int, ...]:
    """The layer's weight shape for a merged delta; LoHa/LoKr store 3x3 convs flattened, so tell them by name."""
    if delta.dim() == 4:
        return tuple(delta.shape)
    out_dim, n = delta.shape[0], delta[0].numel()
    if (name.endswith(_CONV3X3_NAMES) or _UPSAMPLER.search(name)) and n % 9 == 0:
        return (out_dim, n // 9, 3, 3)
    return (out_dim, n)


def _is_conv3x3(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and tuple(shape[2:]) != (1, 1)


def resize_lora(source: str | os.PathLike, out: str | os.PathLike | None = None, *, rank: int = 16,
                conv_rank: int = 0, dynamic: str = "", precision: str = "same", device: str = "auto",
                progress: bool = True) -> dict:
    """Resize a LoRA file and write it with a fidelity report (``<out>.fidelity.json``); returns the report."""
    from tqdm.auto import tqdm

    from helpers.lora.extract import pick_device

    method, param = svd.parse_dynamic(dynamic) if dynamic else (None, None)
    if rank < 1 or conv_rank < 0:
        raise ValueError(f"rank must be >= 1 and conv rank >= 0 (got {rank}, {conv_rank})")
    if precision != "same" and precision not in PRECISIONS:
        raise ValueError(f"precision must be 'same' or one of {', '.join(PRECISIONS)}, got {precision!r}")
    lora = read_lora(source)
    out = Path(out) if out else default_output(source, rank, dynamic)
    if out.resolve() == Path(source).resolve():
        raise LoraFileError(f"{out}: the output would overwrite the source LoRA; choose another name")
    dev = pick_device(device)
    tensors: dict[str, torch.Tensor] = {}
    rows: list[dict] = []
    last_alpha = None
    for name, module in tqdm(lora.modules.items(), desc="resize", unit="layer", disable=not progress):
        first = next(iter(module.tensors.values()))
        out_dtype = first.dtype if precision == "same" else PRECISIONS[precision]
        if not out_dtype.is_floating_point:
            out_dtype = torch.float16
        row = {"name": name, "algo": module.algo, "old_rank": module.rank}
        rows.append(row)
        u, s, vh, up_shape, down_shape, conv, scale = _module_factors(name, module, dev)
        total = float((s.double() ** 2).sum())
        k = svd.choose_rank(s.cpu(), (conv_rank or rank) if conv else rank, method, param)
        row["delta_energy"] = total * scale ** 2
        if k == 0:
            row["skipped"] = "all-zero layer: dropped"
            continue
        new_up, new_down = svd.split_factors(u[:, :k], s[:k], vh[:k])
        last_alpha = scale * k  # keeps alpha / rank, the layer's effective multiplier
        tensors[f"{name}.lora_up.weight"] = new_up.reshape(up_shape[0], k, *up_shape[2:]).to("cpu", out_dtype).contiguous()
        tensors[f"{name}.lora_down.weight"] = new_down.reshape(k, *down_shape[1:]).to("cpu", out_dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(last_alpha, dtype=out_dtype)
        kept = svd.kept_energy(s, total, k)
        row.update(rank=k, kept=kept, fro_retained=kept ** 0.5,
                   curve=svd.energy_curve(s.cpu(), total, report.CURVE_RANKS, complete=True))
    if not tensors:
        raise LoraFileError(f"{source}: every layer is zero; nothing to write")
    tensors.update(lora.extra)
    old_ranks = {r["old_rank"] for r in rows if r["old_rank"] is not None}
    metadata = _resized_metadata(lora, tensors, old_ranks, method, param, rank, conv_rank, last_alpha)
    backups = backup_existing(out, report.report_path(out))
    write_lora(out, tensors, metadata)
    settings = {"rank": rank, "conv_rank": conv_rank, "dynamic": dynamic, "precision": precision}
    result = _resize_report(source, out, lora.arch, rows, settings)
    if backups:
        result.setdefault("messages", []).append("previous files kept as " + ", ".join(b.name for b in backups))
    report.write_report(result, report.report_path(out))
    return result


def _module_factors(name: str, module, dev):
    """(U, S, Vh, up shape, down shape, is 3x3 conv, scale) of one module's update, on ``dev``.

    Plain LoRA factorises ``up @ down`` exactly through the factors' QR; LoHa / LoKr / Tucker LoCon / full
    factorise their merged delta, which already carries its scale.
    """
    if module.algo == "lora" and "lora_mid.weight" not in module.tensors:
        up = module.tensors["lora_up.weight"].to(dev, torch.float32)
        down = module.tensors["lora_down.weight"].to(dev, torch.float32)
        u, s, vh = svd.product_svd(up.flatten(1), down.flatten(1))
        return u, s, vh, up.shape, down.shape, _is_conv3x3(tuple(down.shape)), module.scale
    delta = module.delta().to(dev)
    shape = weight_shape(name, delta)
    up_shape = (shape[0], 0) + ((1, 1) if len(shape) == 4 else ())
    down_shape = (0,) + tuple(shape[1:])
    mat = delta.reshape(shape[0], -1)
    u, s, vh, _ = svd.truncated_svd(mat, min(mat.shape), "gram")
    return u, s, vh, up_shape, down_shape, _is_conv3x3(shape), 1.0


def _resized_metadata(lora, tensors: dict, old_ranks: set[int], method, param, rank: int, conv_rank: int,
                      last_alpha) -> dict[str, str]:
    """The source's ``ss_*`` metadata with the new dims, the resize note and the network module updated."""
    metadata = dict(lora.metadata)
    old = "/".join(str(r) for r in sorted(old_ranks)) or metadata.get("ss_network_dim", "?")
    comment = metadata.get("ss_training_comment", "")
    if method:
        metadata["ss_network_dim"] = metadata["ss_network_alpha"] = "Dynamic"
        note = f"Dynamic resize with {method}: {param} from {old}"
    else:
        metadata["ss_network_dim"] = str(rank)
        metadata["ss_network_alpha"] = str(last_alpha)
        note = f"dimension is resized from {old} to {rank}" + (f" (conv: {conv_rank})" if conv_rank else "")
    metadata["ss_training_comment"] = f"{note}; {comment}" if comment else note
    if lora.algos.keys() - {"lora"}:
        metadata["ss_network_module"] = "networks.lora"  # LyCORIS input becomes a plain LoRA/LoCon
    if any(t.dim() == 4 and tuple(t.shape[2:]) != (1, 1) for k_, t in tensors.items() if k_.endswith("down.weight")):
        c = conv_rank or rank
        metadata["ss_network_args"] = json.dumps({"conv_dim": str(c), "conv_alpha": str(float(c))})
    return metadata


def _resize_report(source, out: Path, arch: str, rows: list[dict], settings: dict) -> dict:
    extracted = [r for r in rows if "kept" in r]
    overall = {"kept_energy": report.weighted_kept(extracted),
               "mean_layer_kept": sum(r["kept"] for r in extracted) / len(extracted),
               "min_layer_kept": min(r["kept"] for r in extracted),
               "mean_fro_retained": sum(r["fro_retained"] for r in extracted) / len(extracted),
               "layers_extracted": len(extracted), "layers_skipped": len(rows) - len(extracted)}
    ranks: dict[str, int] = {}
    for r in extracted:
        ranks[str(r["rank"])] = ranks.get(str(r["rank"]), 0) + 1
    return {"kind": "resize", "file": str(out), "size_bytes": out.stat().st_size, "source": str(source),
            "source_size_bytes": Path(source).stat().st_size, "arch": arch, "settings": settings,
            "overall": overall, "new_ranks": ranks,
            "messages": [f"{len(extracted)} layers resized, {overall['layers_skipped']} dropped (all zero)"],
            "rank_table": report.rank_table(extracted),
            "skipped": [{"name": r["name"], "reason": r["skipped"]} for r in rows if "skipped" in r],
            "modules": rows}


def resize_from_config(cfg: ResizeConfig, progress: bool = True) -> dict:
    values = dataclasses.asdict(cfg)
    source, out = values.pop("source"), values.pop("out") or None
    return resize_lora(source, out, progress=progress, **values)
