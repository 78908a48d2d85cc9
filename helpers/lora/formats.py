"""Reading and writing LoRA / LyCORIS files (kohya sd-scripts layout, safetensors).

Owns: parsing a file into modules (LoRA / LoCon incl. the Tucker ``lora_mid``, LoHa, LoKr, full ``diff``),
each module's merged weight delta (with its alpha/rank scale), the kohya metadata (``ss_*``, ``modelspec.*``)
and the ``sshs_model_hash`` / ``sshs_legacy_hash`` pair, and atomic writing.

Delta formulas follow LyCORIS 4.1.3 (``lycoris/functional/{locon,loha,lokr}.py``, read, not copied):
LoRA ``up @ down * alpha/r``; LoHa ``(w1a @ w1b) * (w2a @ w2b) * alpha/r``; LoKr ``kron(w1, w2) * alpha/r``
(scale 1 when neither half is factorised); Tucker cores rebuilt with ``einsum("i j ..., j r, i p -> p r ...")``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from helpers.models.checkpoint import PICKLE_SUFFIXES, CheckpointError, read_safetensors_header

SUFFIXES = {
    "lora": ("lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "dora_scale"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha", "dora_scale"),
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t1", "lokr_t2",
             "alpha", "dora_scale"),
    "full": ("diff", "diff_b"),
}
PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
BASE_MODEL_VERSION = {"sdxl": "sdxl_base_v1-0", "sd15": "sd_v1"}
MODELSPEC_ARCH = {"sdxl": "stable-diffusion-xl-v1-base", "sd15": "stable-diffusion-v1"}
RESOLUTION = {"sdxl": "1024x1024", "sd15": "512x512"}


class LoraFileError(ValueError):
    """A LoRA file that cannot be used; the message names the file and what to do."""


@dataclass
class LoraModule:
    """The tensors of one adapted layer."""

    name: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def algo(self) -> str:
        keys = set(self.tensors)
        if "lora_down.weight" in keys:
            return "lora"
        if "hada_w1_a" in keys:
            return "loha"
        if keys & {"lokr_w1", "lokr_w1_a"}:
            return "lokr"
        if "diff" in keys:
            return "full"
        return "unknown"

    @property
    def alpha(self) -> float | None:
        a = self.tensors.get("alpha")
        return float(a.float()) if a is not None else None

    @property
    def rank(self) -> int | None:
        t = self.tensors
        if self.algo == "lora":
            return int(t["lora_down.weight"].shape[0])
        if self.algo == "loha":
            return int(t["hada_w1_b"].shape[0])
        if self.algo == "lokr":
            if "lokr_w1_b" in t:
                return int(t["lokr_w1_b"].shape[0])
            if "lokr_w2_b" in t:
                return int(t["lokr_w2_b"].shape[0])
        return None

    @property
    def scale(self) -> float:
        """alpha / rank (1 when the file has no alpha, or for unfactorised LoKr / full diffs)."""
        rank, alpha = self.rank, self.alpha
        if rank is None or alpha is None or alpha == 0:
            return 1.0
        return alpha / rank

    def merged(self, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """``weight`` with this module merged in at ``strength`` (float32). DoRA (``dora_scale``): the
        direction W + ΔW rescaled to the trained magnitude m, W' = (W + ΔW)·(s·(m/‖W + ΔW‖ − 1) + 1), the norm
        per output row (per input column when m has that shape), as lycoris' ``weight_decompose``."""
        w = weight.float()
        if "dora_scale" not in self.tensors:
            return w + strength * self.delta(tuple(w.shape))
        w = w + self.delta(tuple(w.shape), dora=True)
        m = self.tensors["dora_scale"].float()
        if m.shape[0] == w.shape[0] and m.numel() == w.shape[0]:
            norm = w.reshape(w.shape[0], -1).norm(dim=1).reshape(m.shape)
        else:
            norm = w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1).reshape(m.shape)
        return w * (strength * (m / (norm + torch.finfo(w.dtype).eps) - 1) + 1)

    def delta(self, shape: tuple[int, ...] | None = None, dora: bool = False) -> torch.Tensor:
        """The merged weight change (float32), reshaped to the target ``shape`` when given. A DoRA module has
        no delta of its own (it depends on the base weight: see :meth:`merged`); ``dora=True`` gives its
        low-rank part ΔW."""
        if "dora_scale" in self.tensors and not dora:
            raise LoraFileError(f"{self.name}: a DoRA module (dora_scale) has no plain delta: it rescales the "
                                "merged weight, so it can be merged into a base but not resized or extracted")
        t = {k: v.float() for k, v in self.tensors.items() if k != "dora_scale"}
        algo = self.algo
        if algo == "lora":
            up, down = t["lora_up.weight"], t["lora_down.weight"]
            if "lora_mid.weight" in t:  # LoCon Tucker: up (o, r), mid (r, r, k, k), down (r, i)
                d = torch.einsum("m n ..., i m, n j -> i j ...", t["lora_mid.weight"], up.flatten(1), down.flatten(1))
            else:
                d = up.flatten(1) @ down.flatten(1)
                d = d.reshape(up.shape[0], *down.shape[1:]) if down.dim() == 4 else d
        elif algo == "loha":
            if "hada_t1" in t:
                w1 = torch.einsum("i j ..., j r, i p -> p r ...", t["hada_t1"], t["hada_w1_b"], t["hada_w1_a"])
                w2 = torch.einsum("i j ..., j r, i p -> p r ...", t["hada_t2"], t["hada_w2_b"], t["hada_w2_a"])
                d = w1 * w2
            else:
                d = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        elif algo == "lokr":
            w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
            if "lokr_w2" in t:
                w2 = t["lokr_w2"]
            elif "lokr_t2" in t:
                w2 = torch.einsum("i j ..., j r, i p -> p r ...", t["lokr_t2"], t["lokr_w2_b"], t["lokr_w2_a"])
            else:
                r, *rest = t["lokr_w2_b"].shape
                w2 = (t["lokr_w2_a"] @ t["lokr_w2_b"].reshape(r, -1))
                w2 = w2.reshape(-1, *rest) if len(rest) > 1 else w2
            for _ in range(w2.dim() - w1.dim()):
                w1 = w1.unsqueeze(-1)
            d = torch.kron(w1, w2)
        elif algo == "full":
            d = t["diff"]
        else:
            raise LoraFileError(f"{self.name}: unrecognised tensors {sorted(self.tensors)}")
        d = d * self.scale
        if shape is not None:
            if d.numel() != _numel(shape):
                raise LoraFileError(f"{self.name}: its delta has shape {tuple(d.shape)} but the model's weight is "
                                    f"{tuple(shape)}: this LoRA was made for a different model")
            d = d.reshape(shape)
        return d


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@dataclass
class LoraFile:
    """A parsed LoRA / LyCORIS file."""

    path: Path
    modules: dict[str, LoraModule]
    metadata: dict[str, str]
    extra: dict[str, torch.Tensor]  # tensors that are not part of any module (passed through on resize)

    @property
    def algos(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.modules.values():
            counts[m.algo] = counts.get(m.algo, 0) + 1
        return counts

    @property
    def arch(self) -> str | None:
        """"sdxl" / "sd15" from metadata or key names (None when it cannot tell)."""
        version = self.metadata.get("ss_base_model_version", "")
        spec = self.metadata.get("modelspec.architecture", "")
        if version.startswith("sdxl") or spec.startswith("stable-diffusion-xl"):
            return "sdxl"
        if version.startswith("sd_v1") or spec.startswith("stable-diffusion-v1"):
            return "sd15"
        names = list(self.modules)
        if any(n.startswith(("lora_te1_", "lora_te2_")) for n in names) or any(
                "input_blocks_7_1_transformer_blocks_9" in n for n in names):
            return "sdxl"
        if any(n.startswith("lora_te_") for n in names) or any("down_blocks_3_" in n for n in names):
            return "sd15"
        return None


def read_lora(path: str | os.PathLike, allow_pickle: bool = False) -> LoraFile:
    """Parse a LoRA / LyCORIS safetensors file; a truncated file or an unknown layout raises LoraFileError."""
    path = Path(path)
    if not path.is_file():
        raise LoraFileError(f"{path}: no such LoRA file")
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise LoraFileError(f"{path}: refusing to load a pickle file ({path.suffix}): unpickling can run "
                                "arbitrary code. Use a .safetensors LoRA, or pass allow_pickle=True "
                                "(CLI: --allow-pickle) if you trust its source.")
        state = torch.load(str(path), map_location="cpu", weights_only=False)
        metadata: dict[str, str] = {}
    else:
        try:
            read_safetensors_header(path)
        except CheckpointError as exc:
            raise LoraFileError(str(exc)) from None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    modules: dict[str, LoraModule] = {}
    extra: dict[str, torch.Tensor] = {}
    all_suffixes = sorted({s for group in SUFFIXES.values() for s in group}, key=len, reverse=True)
    unknown = []
    for key, tensor in state.items():
        suffix = next((s for s in all_suffixes if key.endswith("." + s)), None)
        if suffix is None:
            if key.startswith(("lora_", "lycoris_")):
                unknown.append(key)
            else:
                extra[key] = tensor
            continue
        name = key[: -len(suffix) - 1]
        modules.setdefault(name, LoraModule(name)).tensors[suffix] = tensor
    if unknown:
        raise LoraFileError(f"{path}: {len(unknown)} tensors with unknown suffixes (e.g. {unknown[:3]}); "
                            "supported: LoRA/LoCon (lora_down/lora_up/alpha), LoHa (hada_*), LoKr (lokr_*), "
                            "full (diff)")
    if not modules:
        sample = ", ".join(list(state)[:4]) or "no tensors"
        raise LoraFileError(f"{path}: no LoRA modules found ({sample}); is this a LoRA in kohya format? "
                            "(diffusers/PEFT 'lora_A/lora_B' files are not supported here)")
    broken = [m.name for m in modules.values() if m.algo == "unknown"
              or (m.algo == "lora" and "lora_up.weight" not in m.tensors)]
    if broken:
        raise LoraFileError(f"{path}: incomplete modules (e.g. {broken[:3]}): the file is damaged")
    return LoraFile(path, modules, metadata, extra)


# ---------------------------------------------------------------- writing
def file_hashes(path: Path) -> tuple[str, str]:
    """sha256 of the data after the header, and the legacy hash (8 hex of sha256 of 64 KiB at 1 MiB)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        f.seek(8 + n)
        model = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            model.update(chunk)
        f.seek(0x100000)
        legacy = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    return model.hexdigest(), legacy


def addnet_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as sd-scripts' ``train_util.precalculate_safetensors_hashes``.

    Serialise with only the ``ss_*`` metadata; model hash = sha256 of the bytes after the header;
    legacy hash = first 8 hex digits of sha256 of the 64 KiB at offset 1 MiB (sd-webui-additional-networks).
    """
    from safetensors.torch import save

    blob = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    n = int.from_bytes(blob[:8], "little")
    model_hash = hashlib.sha256(memoryview(blob)[8 + n:]).hexdigest()
    legacy = hashlib.sha256(memoryview(blob)[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy


def kohya_metadata(arch: str, prediction: str, dim: int | str, alpha: float | str, network_args: dict,
                   title: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The ``ss_*`` + ``modelspec.*`` keys sd-scripts' extract script writes for this architecture."""
    version = BASE_MODEL_VERSION[arch] + ("_v" if prediction == "v_prediction" else "")
    meta = {
        "ss_v2": "False",
        "ss_base_model_version": version,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(alpha),
        "ss_network_args": json.dumps(network_args),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": MODELSPEC_ARCH[arch] + "/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": title,
        "modelspec.resolution": RESOLUTION[arch],
        "modelspec.date": _dt.datetime.now().replace(microsecond=0).isoformat(),
        "modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon",
    }
    meta.update(extra or {})
    return meta


def backup_existing(*paths: str | os.PathLike) -> list[Path]:
    """Move files about to be replaced aside as ``<stem>.bak-<time><suffix>`` (never silently overwrite)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    moved = []
    for p in map(Path, paths):
        if p.exists():
            target = p.with_name(f"{p.name.split('.')[0]}.bak-{stamp}{''.join(p.suffixes)}")
            os.replace(p, target)
            moved.append(target)
    return moved


def write_lora(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors LoRA atomically, adding the ``sshs_*`` hashes (same values as :func:`addnet_hashes`).

    The file is first written with only the ``ss_*`` metadata (the bytes sd-scripts hashes), hashed from disk,
    then its data section is copied behind the full header: no second in-memory copy of a 1 GB LoRA.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = dict(metadata)
    fd, first = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".ss.tmp", dir=path.parent)
    os.close(fd)
    fd, final = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, first, metadata={k: v for k, v in metadata.items() if k.startswith("ss_")})
        metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = file_hashes(Path(first))
        with open(first, "rb") as src, open(final, "wb") as dst:
            n = int.from_bytes(src.read(8), "little")
            header = json.loads(src.read(n))
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
            blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
            blob += b" " * (-len(blob) % 8)  # tensor data stays 8-byte aligned
            dst.write(len(blob).to_bytes(8, "little"))
            dst.write(blob)
            for chunk in iter(lambda: src.read(1 << 24), b""):
                dst.write(chunk)
        os.replace(final, path)
    finally:
        Path(first).unlink(missing_ok=True)
        Path(final).unlink(missing_ok=True)
    return path


def describe_lora(lora: LoraFile) -> dict:
    """Everything ``inspect`` shows: architecture, algorithms, ranks/alphas, module counts, metadata, size."""
    ranks: dict[str, int] = {}
    alphas: dict[str, int] = {}
    components = {"unet": 0, "te1": 0, "te2": 0, "other": 0}
    conv = 0
    for m in lora.modules.values():
        if m.rank is not None:
            ranks[str(m.rank)] = ranks.get(str(m.rank), 0) + 1
        if m.alpha is not None:
            key = f"{m.alpha:g}"
            alphas[key] = alphas.get(key, 0) + 1
        if m.name.startswith("lora_unet_"):
            components["unet"] += 1
        elif m.name.startswith(("lora_te1_", "lora_te_")):
            components["te1"] += 1
        elif m.name.startswith("lora_te2_"):
            components["te2"] += 1
        else:
            components["other"] += 1
        down = m.tensors.get("lora_down.weight")
        if down is not None and down.dim() == 4 and tuple(down.shape[2:]) != (1, 1):
            conv += 1
    params = sum(t.numel() for m in lora.modules.values() for t in m.tensors.values())
    dtypes = sorted({str(t.dtype).replace("torch.", "") for m in lora.modules.values() for t in m.tensors.values()})
    return {
        "file": str(lora.path),
        "size_bytes": lora.path.stat().st_size,
        "architecture": lora.arch or "unknown",
        "algorithms": lora.algos,
        "modules": len(lora.modules),
        "modules_by_component": {k: v for k, v in components.items() if v},
        "conv3x3_modules": conv,
        "ranks": dict(sorted(ranks.items(), key=lambda kv: int(kv[0]))),
        "alphas": alphas,
        "parameters": params,
        "dtypes": dtypes,
        "metadata": {k: (v if len(v) <= 300 else v[:300] + "…") for k, v in sorted(lora.metadata.items())},
    }
