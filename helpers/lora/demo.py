"""The LoRA stage of ``python -m helpers demo``, and a stand-in fine-tune for when no training run exists.

Owns ``run_demo(ws)`` (extract a LoRA from the demo training run's output against its base, then resize it)
and ``make_tuned_copy`` (a base model with a realistic synthetic change: low-rank structure plus noise on
every weight matrix of the chosen components), which the demo uses when training has not run yet and the
tests use as their "fine-tune".
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch


def _perturb(t: torch.Tensor, gen: torch.Generator, scale: float, rank: int) -> torch.Tensor:
    """``t + scale * std(t) * (low-rank signal + 10 % noise)``, same dtype."""
    if t.dim() < 2 or not t.is_floating_point():
        return t
    m, n = t.shape[0], t[0].numel()
    r = min(rank, m, n)
    signal = torch.randn(m, r, generator=gen) @ torch.randn(r, n, generator=gen) / r ** 0.5
    noise = torch.randn(m, n, generator=gen)
    std = float(t.float().std()) or 1.0
    return (t.float() + scale * std * (signal + 0.1 * noise).reshape(t.shape)).to(t.dtype)


def make_tuned_copy(src: str | os.PathLike, dst: str | os.PathLike, components: tuple[str, ...] = ("unet", "te1"),
                    scale: float = 0.05, rank: int = 4, seed: int = 1) -> Path:
    """Copy a model (diffusers folder or single file) and change the weight matrices of ``components``."""
    from safetensors.torch import load_file, save_file

    from helpers.models import keymap, open_checkpoint

    src, dst = Path(src), Path(dst)
    gen = torch.Generator().manual_seed(seed)
    arch = open_checkpoint(src).arch
    if src.is_dir():
        shutil.copytree(src, dst)
        folders = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2", "vae": "vae"}
        files = [f for c in components for f in sorted((dst / folders[c]).glob("*.safetensors"))]
        for f in files:
            sd = load_file(str(f))
            save_file({k: _perturb(v, gen, scale, rank) for k, v in sd.items()}, str(f), metadata={"format": "pt"})
        return dst
    from safetensors import safe_open

    prefixes = tuple(p for c, p in keymap.component_prefixes(arch).items() if c in components)
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata() or {}
        sd = {k: f.get_tensor(k) for k in f.keys()}
    sd = {k: (_perturb(v, gen, scale, rank) if k.startswith(prefixes) else v) for k, v in sd.items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(dst), metadata=metadata)
    return dst


def _demo_pair(ws) -> tuple[Path, Path, str]:
    """(base, tuned, note): the demo run's newest checkpoint against the demo base, or a stand-in."""
    base = ws.models / "tiny-sdxl.safetensors"
    if not base.exists():
        base = ws.model("tiny-sdxl")
    if not base.exists():
        raise FileNotFoundError(f"no demo base model in {ws.models} (expected tiny-sdxl.safetensors or "
                                "tiny-sdxl/): run `python -m helpers demo` from the start")
    checkpoints = ws.run("demo").checkpoints
    found = sorted(checkpoints.glob("*.safetensors"), key=lambda p: p.stat().st_mtime) if checkpoints.is_dir() else []
    if found:
        from helpers.lora.notebook import run_base

        return run_base(ws, found[-1]) or base, found[-1], f"tuned = training run 'demo' ({found[-1].name})"
    stand_in = ws.cache / "lora-demo" / ("tuned-" + base.name)
    if stand_in.exists():
        shutil.rmtree(stand_in) if stand_in.is_dir() else stand_in.unlink()
    make_tuned_copy(base, stand_in)
    return base, stand_in, "no training run 'demo' yet: tuned = a synthetic perturbation of the base (stand-in)"


def run_demo(ws) -> dict[str, str]:
    """Extract a LoRA from the demo run (or a stand-in fine-tune) into ``ws.exports``, then resize it."""
    from helpers.lora.extract import extract_lora
    from helpers.lora.report import report_path
    from helpers.lora.resize import resize_lora

    base, tuned, note = _demo_pair(ws)
    out = ws.exports / "demo-lora-r16.safetensors"
    extract_lora(base, tuned, out, rank=16, conv_rank=8, progress=False)
    small = ws.exports / "demo-lora-r4.safetensors"
    resize_lora(out, small, rank=4, progress=False)
    return {"lora source": note, "extracted LoRA (rank 16, conv 8)": str(out),
            "fidelity report": str(report_path(out)), "resized LoRA (rank 4)": str(small)}
