"""Merging: bake a LoRA / LyCORIS file into a base model at a strength and write a single-file checkpoint.

Owns ``merge_lora``. The base is read one tensor at a time and the output written one tensor at a time
(``helpers.models.export.write_safetensors``, atomic), so merging an SDXL model needs memory for one tensor
plus the LoRA, not two models. Layer names are resolved against the base model (sd-scripts names, and the
diffusers-style / no-``text_model_`` names LyCORIS writes); a file with layers the base does not have, or
made for the other architecture, is refused with the names that did not match.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from helpers.lora import naming
from helpers.lora.formats import LoraFileError, read_lora


def _configs_of(base) -> dict | None:
    """Component configs to carry in ``tunebook.configs`` (lets ``load_model`` rebuild any width)."""
    if "tunebook.configs" in base.metadata:
        return json.loads(base.metadata["tunebook.configs"])
    if base.layout != "diffusers":
        return None
    folders = {"unet": "unet", "vae": "vae", "te1": "text_encoder", "te2": "text_encoder_2"}
    out = {}
    for comp, sub in folders.items():
        f = Path(base.path) / sub / "config.json"
        if f.exists():
            out[comp] = json.loads(f.read_text(encoding="utf-8"))
    return out or None


def _tensor_source(load, component: str, names: list[str], kind: str):
    """A no-argument function producing one original-layout tensor from its diffusers-named part(s)."""
    def make() -> torch.Tensor:
        if kind == "stack":
            return torch.cat([load(component, n) for n in names], 0)
        t = load(component, names[0])
        if kind == "transpose":
            return t.T
        if kind == "conv1x1":
            return t[:, :, None, None]
        return t
    return make


def resolve_modules(lora, base) -> dict[str, naming.Target]:
    """LoRA module name -> base-model target; raises LoraFileError naming modules the base does not have."""
    if lora.arch and lora.arch != base.arch:
        raise LoraFileError(f"{lora.path} is a {lora.arch} LoRA but {base.path} is {base.arch}: pick a base "
                            "of the architecture the LoRA was made for")
    table = naming.name_table(base)
    resolved, unknown = {}, []
    for name in lora.modules:
        if name in table:
            resolved[name] = table[name]
        else:
            unknown.append(name)
    if unknown:
        raise LoraFileError(f"{lora.path}: {len(unknown)} of {len(lora.modules)} layers are not in the base model "
                            f"{base.path} (e.g. {', '.join(unknown[:3])}): the LoRA was made for another model "
                            "or its names are not kohya/LyCORIS names. Nothing was written.")
    return resolved


def merge_lora(base: str | os.PathLike, lora: str | os.PathLike | list, out: str | os.PathLike, *,
               strength: float | list[float] = 1.0, precision: str = "fp16", allow_pickle: bool = False,
               overwrite: bool = False, progress: bool = True) -> dict:
    """Write ``base + strength * delta`` for every layer of the LoRA(s) as one original-layout safetensors.

    ``lora`` may be a list of files (with one strength each, or one strength for all). Returns a summary.
    """
    from helpers.models import open_checkpoint
    from helpers.models.export import PRECISIONS, modelspec_metadata, write_safetensors

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the merged model must be a .safetensors file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists: choose another name or pass overwrite=True (CLI: --overwrite)")
    paths = [Path(p) for p in (lora if isinstance(lora, (list, tuple)) else [lora])]
    strengths = strength if isinstance(strength, (list, tuple)) else [strength] * len(paths)
    if len(strengths) != len(paths):
        raise ValueError(f"{len(paths)} LoRA files but {len(strengths)} strengths")
    ck = open_checkpoint(base, allow_pickle=allow_pickle)
    if Path(base).resolve() == out.resolve():
        raise ValueError(f"{out}: the merged model would overwrite the base; choose another file name")
    missing = [c for c in (["unet", "vae", "te1"] + (["te2"] if ck.arch == "sdxl" else [])) if c not in ck.components()]
    if missing:
        raise LoraFileError(f"{base}: the base lacks {', '.join(missing)}; merging needs a complete model")
    changes, counts = _collect_changes(paths, strengths, ck, allow_pickle)

    def load(component: str, name: str) -> torch.Tensor:
        t = ck.get(component, name)
        mods = changes.get((component, name))
        if not mods:
            return t
        w = t.float()
        for module, s, _target in mods:
            w = module.merged(w, s)
        return w

    plan = _merged_plan(ck, load, PRECISIONS[precision])
    metadata = modelspec_metadata(ck.arch, ck.prediction, out.stem)
    configs = _configs_of(ck)
    if configs:
        metadata["tunebook.configs"] = json.dumps(configs, default=str, sort_keys=True)
    metadata["tunebook.merge"] = json.dumps({"base": Path(base).name, "loras": [
        {"file": Path(c["file"]).name, "strength": c["strength"]} for c in counts]})
    try:
        write_safetensors(out, plan, metadata, progress="merge" if progress else None)
    finally:
        ck.close()
    return {"kind": "merge", "file": str(out), "size_bytes": out.stat().st_size, "arch": ck.arch,
            "base": str(base), "loras": counts, "layers_changed": len(changes), "precision": precision}


def _collect_changes(paths: list[Path], strengths: list[float], ck, allow_pickle: bool):
    """({(component, weight key): [(module, strength, target)]}, one summary per LoRA file)."""
    changes: dict[tuple[str, str], list] = {}
    counts = []
    for path, s in zip(paths, strengths, strict=True):
        lf = read_lora(path, allow_pickle=allow_pickle)
        resolved = resolve_modules(lf, ck)
        for name, target in resolved.items():
            changes.setdefault((target.component, target.weight_key), []).append((lf.modules[name], s, target))
        counts.append({"file": str(path), "strength": s, "layers": len(resolved), "algorithms": lf.algos})
    return changes, counts


def _merged_plan(ck, load, dtype: torch.dtype) -> dict:
    """The original-layout tensor plan of the base model, each tensor made by ``load`` (base + LoRA deltas)."""
    from helpers.models import keymap
    from helpers.models.export import plan_original_layout

    meta_states = {c: {k: torch.empty(ck.shape(c, k), dtype=ck.dtype(c, k), device="meta") for k in ck.keys(c)}
                   for c in ck.components()}
    tes = [meta_states["te1"]] + ([meta_states["te2"]] if ck.arch == "sdxl" else [])
    plan = plan_original_layout(meta_states["unet"], meta_states["vae"], tes, ck.arch, dtype, ck.prediction)
    prefixes = keymap.component_prefixes(ck.arch)
    for key, (shape, dtype_, _make) in list(plan.items()):
        component = next((c for c, p in prefixes.items() if key.startswith(p)), None)
        if component is None or key.endswith("logit_scale"):
            continue  # constants the plan makes itself (v_pred marker, OpenCLIP logit scale)
        names = keymap.key_to_diffusers(component, key, ck.arch)
        if len(names) == 3:
            kind = "stack"  # TE2 in_proj: q, k, v stacked
        elif component == "te2" and names[0] == "text_projection.weight":
            kind = "transpose"
        elif len(shape) == 4 and len(ck.shape(component, names[0])) == 2:
            kind = "conv1x1"  # VAE attention stored as a 1x1 conv
        else:
            kind = ""
        plan[key] = (shape, dtype_, _tensor_source(load, component, names, kind))
    return plan
