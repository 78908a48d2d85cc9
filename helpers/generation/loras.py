"""LoRA / LyCORIS files applied to models in memory, at a strength, fused or unfused, and removed exactly.

Owns ``LoraSpec`` and ``AppliedLoras``. Files are read and their layer names resolved by ``helpers.lora``
(``formats.read_lora``, ``merge.resolve_modules`` over ``naming.name_table``), so every file the LoRA stage
reads (kohya and LyCORIS names; LoRA, LoCon incl. Tucker, LoHa, LoKr, full diff) applies here too, and a file
for the other architecture or another model is refused with the layer names that did not match.

- fused (default): ``W = W0 + sum(strength_i * delta_i)`` written into the weights; no cost per image. The
  original weights of touched layers are kept on the CPU, so changing strengths or removing the LoRAs gives
  back the base weights bit for bit (strength 0 = the base model exactly).
- unfused: forward hooks add ``strength * scale * up(down(x))`` (plain LoRA/LoCon: two thin matmuls) or
  ``strength * delta(x)`` for the other algorithms; the weights are never touched.
DoRA files (``dora_scale``) are refused, as in ``helpers.lora.merge``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers.lora.formats import LoraFileError, LoraModule, read_lora
from helpers.lora.merge import resolve_modules


@dataclass
class LoraSpec:
    """A LoRA file and the strength to apply it at."""

    path: Path
    strength: float = 1.0

    @property
    def name(self) -> str:
        return Path(self.path).stem

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``path`` or ``path:strength`` (the command line's ``--lora`` value)."""
        head, sep, tail = str(text).rpartition(":")
        if sep and head:
            try:
                return cls(Path(head).expanduser(), float(tail))
            except ValueError:
                pass
        return cls(Path(text).expanduser())


def _hf_name(component: str, key: str) -> str:
    """Text-encoder names with ``text_model.`` (transformers >= 5.6 leaves it out of ``CLIPTextModel``)."""
    if component in ("te1", "te2") and not key.startswith(("text_model.", "text_projection")):
        return "text_model." + key
    return key


class ModelWeights:
    """In-memory models seen through the read interface ``helpers.lora.naming`` uses on checkpoint files."""

    def __init__(self, arch: str, label: str, modules: dict[str, torch.nn.Module]):
        self.arch, self.path, self.modules = arch, label, modules
        self._names = {c: {_hf_name(c, k): k for k, _ in m.named_parameters()} for c, m in modules.items()}
        self._shapes = {c: dict(m.named_parameters()) for c, m in modules.items()}

    def components(self) -> list[str]:
        return list(self.modules)

    def keys(self, component: str) -> list[str]:
        return list(self._names[component])

    def shape(self, component: str, key: str) -> tuple[int, ...]:
        return tuple(self._shapes[component][self._names[component][key]].shape)

    def module(self, component: str, module_path: str) -> torch.nn.Module:
        """The layer for a resolved target (``text_model.`` re-stripped where the model has no such prefix)."""
        key = self._names[component][module_path + ".weight"]
        return self.modules[component].get_submodule(key[: -len(".weight")])


class _Layer:
    """One adapted layer: its module, the LoRA modules touching it (with the index of their file)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.parts: list[tuple[int, LoraModule]] = []
        self.original: torch.Tensor | None = None  # fused: the base weight, on the CPU
        self.hook = None
        self._cache: dict[tuple[int, torch.device, torch.dtype], dict[str, torch.Tensor]] = {}

    def delta(self, strengths: list[float], device: torch.device) -> torch.Tensor | None:
        """sum(strength * delta) in float32 on ``device``, or None when every strength is 0."""
        total = None
        for index, part in self.parts:
            if strengths[index] == 0:
                continue
            on_device = LoraModule(part.name, {k: v.to(device) for k, v in part.tensors.items()})
            d = strengths[index] * on_device.delta(tuple(self.module.weight.shape))
            total = d if total is None else total + d
        return total

    def tensors(self, index: int, part: LoraModule, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The part's factors (or dense delta) on the input's device and dtype, made once."""
        key = (index, x.device, x.dtype)
        if key not in self._cache:
            t = part.tensors
            factored = part.algo == "lora" and "dora_scale" not in t
            if factored:
                self._cache[key] = {k: t[k].to(x.device, x.dtype) for k in ("lora_down.weight", "lora_up.weight",
                                                                            "lora_mid.weight") if k in t}
            else:
                self._cache[key] = {"delta": part.delta(tuple(self.module.weight.shape)).to(x.device, x.dtype)}
        return self._cache[key]

    def branch(self, x: torch.Tensor, strengths: list[float]) -> torch.Tensor | None:
        """What the LoRAs add to this layer's output for input ``x`` (unfused mode)."""
        m, out = self.module, None
        conv = isinstance(m, torch.nn.Conv2d)
        for index, part in self.parts:
            if strengths[index] == 0:
                continue
            t = self.tensors(index, part, x)
            if "delta" in t:
                y = (F.conv2d(x, t["delta"], None, m.stride, m.padding, m.dilation, m.groups) if conv
                     else F.linear(x, t["delta"]))
                y = y * strengths[index]
            elif conv:
                down, up, mid = t["lora_down.weight"], t["lora_up.weight"], t.get("lora_mid.weight")
                if mid is not None:  # Tucker LoCon: 1x1 down, kxk core at the layer's stride, 1x1 up
                    h = F.conv2d(F.conv2d(x, down), mid, None, m.stride, m.padding, m.dilation)
                else:
                    h = F.conv2d(x, down, None, m.stride, m.padding, m.dilation)
                y = F.conv2d(h, up) * (strengths[index] * part.scale)
            else:
                y = F.linear(F.linear(x, t["lora_down.weight"]), t["lora_up.weight"]) * (strengths[index] * part.scale)
            out = y if out is None else out + y
        return out


class AppliedLoras:
    """LoRA files applied to a set of models (``{"unet": …, "te1": …, "te2": …}``); see module docstring."""

    def __init__(self, models: dict[str, torch.nn.Module], arch: str, specs: list[LoraSpec], *, fused: bool = True,
                 model_label: str = "the model"):
        self.specs, self.fused = list(specs), fused
        self.strengths = [float(s.strength) for s in self.specs]
        self.layers: dict[tuple[str, str], _Layer] = {}
        weights = ModelWeights(arch, model_label, models)
        for index, spec in enumerate(self.specs):
            lora = read_lora(spec.path)
            dora = [n for n, m in lora.modules.items() if "dora_scale" in m.tensors]
            if dora:
                raise LoraFileError(f"{spec.path}: DoRA layers (dora_scale, e.g. {dora[0]}) cannot be applied here; "
                                    "use a plain LoRA/LoCon/LoHa/LoKr file")
            for name, target in resolve_modules(lora, weights).items():
                key = (target.component, target.module)
                if key not in self.layers:
                    self.layers[key] = _Layer(weights.module(*key))
                self.layers[key].parts.append((index, lora.modules[name]))
        self._apply()

    def set_strengths(self, strengths: list[float] | float) -> None:
        """New strengths (one per file, or one for all); fused weights are recomputed from the originals."""
        values = strengths if isinstance(strengths, (list, tuple)) else [strengths] * len(self.specs)
        if len(values) != len(self.specs):
            raise ValueError(f"{len(self.specs)} LoRA files but {len(values)} strengths")
        self.strengths = [float(s) for s in values]
        if self.fused:
            self._apply()

    def _apply(self) -> None:
        with torch.no_grad():
            for layer in self.layers.values():
                weight = layer.module.weight
                if not self.fused:
                    if layer.hook is None:
                        layer.hook = layer.module.register_forward_hook(self._hook(layer))
                    continue
                if layer.original is None:
                    layer.original = weight.detach().to("cpu", copy=True)
                delta = layer.delta(self.strengths, weight.device)
                base = layer.original.to(weight.device)
                weight.copy_(base if delta is None else (base.float() + delta).to(weight.dtype))

    def _hook(self, layer: _Layer):
        def add_branch(_module, inputs, output):
            extra = layer.branch(inputs[0], self.strengths)
            return output if extra is None else output + extra.to(output.dtype)
        return add_branch

    def remove(self) -> None:
        """Take every LoRA out again: the original weights back, hooks gone."""
        with torch.no_grad():
            for layer in self.layers.values():
                if layer.original is not None:
                    layer.module.weight.copy_(layer.original.to(layer.module.weight.device))
                    layer.original = None
                if layer.hook is not None:
                    layer.hook.remove()
                    layer.hook = None
        self.layers = {}

    def infotext(self) -> tuple[list[tuple[str, float]], dict[str, str]]:
        """(``<lora:name:strength>`` pairs, {name: hash}) for the A1111 parameters text."""
        tags = [(s.name, st) for s, st in zip(self.specs, self.strengths, strict=True)]
        return tags, {s.name: lora_hash(s.path) for s in self.specs}


_HASHES: dict[tuple[str, int, int], str] = {}


def lora_hash(path: str | os.PathLike) -> str:
    """A1111's LoRA hash: the first 12 hex digits of the sha256 of the data after the safetensors header."""
    from helpers.lora.formats import file_hashes  # the same sha256 sd-scripts stores as sshs_model_hash

    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_hashes(path)[0][:12]
    return _HASHES[key]
