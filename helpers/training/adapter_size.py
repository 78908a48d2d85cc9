"""How many parameters an adapter (``[network]``) trains, counted without weights: the real SDXL / SD 1.5
architecture (shipped configs) built on the meta device, the targeted layers wrapped by lycoris' own modules
(LoCon / LoHa / LoKr / Full), their parameters counted. Seconds, no memory; the pre-flight's adapter memory,
state size and file size come from here.

``attach_network`` (``training.network``, what training runs) attaches to the meta model; should it fail there,
the layers are chosen here by the preset as the network section describes them (attention: the q/k/v/out linears of
diffusers ``Attention`` and CLIP ``CLIPAttention``; MLP: ``FeedForward`` / ``CLIPMLP`` linears and the
transformer blocks' 1x1 proj_in/proj_out; full U-Net: also the ResNet / down- and up-sampling convs), with
``module_rules`` applied by class name or path piece.
"""

from __future__ import annotations

import functools
import json
import types
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parent.parent / "models" / "configs"
ATTENTION = ("Attention", "CLIPAttention")
MLP = ("FeedForward", "CLIPMLP", "Transformer2DModel")
CONVS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
ADAPTER_PREFIXES = ("lora_", "hada_", "lokr_", "dora_", "diff", "oft_", "weight")


def meta_bundle(arch: str, unet_config: dict | None = None):
    """U-Net and text encoders of ``arch`` on the meta device (no memory): what the adapter wraps."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    read = lambda p: json.loads((CONFIGS / arch / p).read_text(encoding="utf-8"))  # noqa: E731
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config or read("unet/config.json"))
        encoders = [CLIPTextModel(CLIPTextConfig(**read("text_encoder/config.json")))]
        if arch == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**read("text_encoder_2/config.json"))))
    return types.SimpleNamespace(arch=arch, unet=unet, text_encoders=encoders, vae=torch.nn.Module(), tokenizers=[])


def _wanted(preset: str, classes: set[str], layer: torch.nn.Module) -> bool:
    if isinstance(layer, torch.nn.Linear) or (isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (1, 1)):
        if classes & set(ATTENTION):
            return True
        return (preset in ("attn-mlp", "full-unet") and bool(classes & set(MLP))) or \
            (preset == "full-unet" and bool(classes & set(CONVS)))
    if isinstance(layer, torch.nn.Conv2d):
        return preset == "full-unet" and bool(classes & set(CONVS))
    return False


def target_layers(bundle, preset: str, text_encoders: bool):
    """(path, ancestor class names, layer) of every layer the preset adapts."""
    roots = [("unet", bundle.unet)] + ([(f"te{i + 1}", te) for i, te in enumerate(bundle.text_encoders)]
                                       if text_encoders else [])
    for root, model in roots:
        stack = [(root, model, frozenset())]
        while stack:
            path, module, classes = stack.pop()
            for name, child in module.named_children():
                inner = classes | {type(child).__name__}
                if _wanted(preset, set(classes), child):
                    yield f"{path}.{name}", set(classes), child
                else:
                    stack.append((f"{path}.{name}", child, inner))


def _rule_for(rules, path: str, classes: set[str]):
    for rule in rules:
        if rule.match and (rule.match in classes or rule.match in path):
            return rule
    return None


def _lycoris_module(algo: str, name: str, layer, *, dim: int, alpha: float, factor: int, net):
    from lycoris.modules import FullModule, LoConModule, LohaModule, LokrModule

    common = dict(multiplier=1.0, lora_dim=dim, alpha=alpha or dim)
    if algo in ("lora", "locon"):
        return LoConModule(name, layer, weight_decompose=net.dora, **common)
    if algo == "loha":
        return LohaModule(name, layer, weight_decompose=net.dora, **common)
    if algo == "lokr":
        return LokrModule(name, layer, factor=factor, full_matrix=net.full_matrix, decompose_both=net.decompose_both,
                          weight_decompose=net.dora, **common)
    return FullModule(name, layer, multiplier=1.0)


def _adapter_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(ADAPTER_PREFIXES))


def count_by_preset(bundle, net) -> dict[str, int]:
    """Adapter parameters per component (``unet``, ``te1``, ``te2``), layers chosen by the preset."""
    counts: dict[str, int] = {}
    with torch.device("meta"):
        for index, (path, classes, layer) in enumerate(target_layers(bundle, net.preset, net.train_text_encoder)):
            rule = _rule_for(net.module_rules, path, classes)
            algo = (rule.algo if rule and rule.algo else net.algo)
            is_conv = isinstance(layer, torch.nn.Conv2d) and layer.kernel_size != (1, 1)
            if is_conv and algo in ("lora",):
                algo = "locon"  # a conv is only targeted by the full-unet preset, which LoCon serves
            dim = (rule.dim if rule and rule.dim else 0) or (net.conv_dim if is_conv else net.dim)
            alpha = (rule.alpha if rule and rule.alpha else 0) or (net.conv_alpha if is_conv else net.alpha)
            factor = (rule.factor if rule and rule.factor else 0) or net.factor
            wrapped = _lycoris_module(algo, f"m{index}", layer, dim=max(dim, 1), alpha=alpha, factor=factor, net=net)
            component = path.split(".", 1)[0]
            counts[component] = counts.get(component, 0) + _adapter_params(wrapped)
    return counts


@functools.lru_cache(maxsize=64)
def _cached_count(arch: str, net_repr: str, unet_config: str) -> tuple[tuple[str, int], ...]:
    import pickle

    net = pickle.loads(bytes.fromhex(net_repr))
    bundle = meta_bundle(arch, json.loads(unet_config) if unet_config else None)
    try:
        from helpers.training.network import attach_network

        network = attach_network(bundle, net)
        counts = {name: sum(p.numel() for p in model.parameters() if p.requires_grad)
                  for name, model in network.models.items()}
    except Exception:  # not attachable on the meta device: the preset's own count (the same layers)
        counts = count_by_preset(bundle, net)
    return tuple(sorted(counts.items()))


def adapter_parameter_count(net, arch: str, unet_config: dict | None = None) -> dict[str, int]:
    """Parameters ``net`` (a ``NetworkConfig``) trains on ``arch`` (per component; cached per setting)."""
    import pickle

    config = json.dumps(unet_config, sort_keys=True) if unet_config else ""
    return dict(_cached_count(arch, pickle.dumps(net).hex(), config))
