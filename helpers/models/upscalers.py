"""Super-resolution models (the ESRGAN family most upscalers people name belong to): read, recognise, run tiled.

Two architectures are carried here, written from their papers and reference descriptions:

- **RRDBNet** — ESRGAN (Wang et al. 2018, https://arxiv.org/abs/1809.00219) and Real-ESRGAN (Wang et al. 2021,
  https://arxiv.org/abs/2107.10833): RealESRGAN_x4plus, 4x-UltraSharp, Remacri and most community 4x models.
  Three key layouts are read: the "new" one (``conv_first``, ``body.N.rdb1.conv1``, ``conv_body``, ``conv_up1``,
  ``conv_hr``, ``conv_last``), the BSRGAN one (``RRDB_trunk``, ``trunk_conv``, ``upconv1``, ``HRconv``) and the
  "old" sequential one of the original ESRGAN code (``model.0``, ``model.1.sub.N.RDB1.conv1.0``, ``model.3`` ...).
- **SRVGGNetCompact** — Real-ESRGAN's compact model (realesr-general-x4v3, realesr-animevideov3).

Everything is read from the state dict: scale (upsampling convs, pixel-unshuffle input), features, blocks, growth
channels. Weights come from a ``.safetensors`` file, a ``.pth`` read with ``torch.load(weights_only=True)`` (a
pickle that needs code to load is refused), or a Hub repo. When ``spandrel`` imports (CUDA boxes, where
torchvision matches torch) it is tried first: it knows many more architectures (SwinIR, HAT, DAT, OmniSR ...).

``upscale_image`` runs a model over an image in tiles with overlap, so a 4x model fits any GPU; fp16 on a GPU
(with an fp32 retry for a tile that overflows) and a smaller tile when the GPU runs out of memory, each said in
``notes``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from helpers.changes import write_text_atomic

# short name -> (Hub repo, file); licences differ: Real-ESRGAN is BSD-3, UltraSharp CC BY-NC-SA 4.0
UPSCALERS = {
    "realesrgan-x4plus": ("lllyasviel/Annotators", "RealESRGAN_x4plus.pth"),
    "4x-ultrasharp": ("Kim2091/UltraSharp", "4x-UltraSharp.pth"),
}
DEFAULT_UPSCALER = "realesrgan-x4plus"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
KNOWN = ("ESRGAN / Real-ESRGAN RRDBNet (old, new and BSRGAN key layouts; 4x-UltraSharp, Remacri, RealESRGAN_x4plus "
         "...)", "Real-ESRGAN SRVGGNetCompact (realesr-general-x4v3, realesr-animevideov3)")


class UpscalerError(RuntimeError):
    """An upscaler cannot be found, read or recognised; the message says which and what to do."""


# ---------------------------------------------------------------------------------------------- architectures
class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each seeing all earlier outputs; residual scaled by 0.2 (ESRGAN paper, section 3.1)."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.conv1, self.conv2, self.conv3, self.conv4 = (nn.Conv2d(nf + i * gc, gc, 3, 1, 1) for i in range(4))
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, residual scaled by 0.2."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = ResidualDenseBlock(nf, gc), ResidualDenseBlock(nf, gc), ResidualDenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's generator: conv, RRDB trunk + conv (global residual), nearest-x2 + conv per upsampling step,
    two HR convs. ``unshuffle`` > 1: Real-ESRGAN's x2/x1 models pixel-unshuffle the input first."""

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 23, gc: int = 32, upsamples: int = 2,
                 unshuffle: int = 1):
        super().__init__()
        self.unshuffle = unshuffle
        self.conv_first = nn.Conv2d(in_nc * unshuffle ** 2, nf, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(nf, gc) for _ in range(nb)))
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up = nn.ModuleList(nn.Conv2d(nf, nf, 3, 1, 1) for _ in range(upsamples))
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in self.conv_up:
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact net: ``num_conv`` 3x3 convs at low resolution, pixel shuffle at the end, plus the
    nearest-upsampled input (the net learns the residual). Key layout ``body.N`` as in the released weights."""

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, num_conv: int = 16, scale: int = 4,
                 act_type: str = "prelu"):
        super().__init__()
        self.scale = scale
        def act() -> nn.Module:
            return nn.PReLU(nf) if act_type == "prelu" else nn.LeakyReLU(0.1) if act_type == "leakyrelu" else nn.ReLU()

        layers: list[nn.Module] = [nn.Conv2d(in_nc, nf, 3, 1, 1), act()]
        for _ in range(num_conv):
            layers += [nn.Conv2d(nf, nf, 3, 1, 1), act()]
        layers.append(nn.Conv2d(nf, out_nc * scale * scale, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return F.pixel_shuffle(out, self.scale) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


# ---------------------------------------------------------------------------------------------- recognising
@dataclass
class UpscalerSpec:
    """What a state dict is: architecture, sizes, and the state dict renamed to our modules' keys."""

    arch: str
    scale: int
    params: dict[str, object]
    state: dict[str, torch.Tensor]

    def describe(self) -> str:
        return f"{self.arch} x{self.scale} (" + ", ".join(f"{k} {v}" for k, v in self.params.items()) + ")"

    def build(self) -> nn.Module:
        return (RRDBNet if self.arch == "RRDBNet" else SRVGGNetCompact)(**self.params)


def unwrap_state_dict(state: dict) -> dict:
    """Real-ESRGAN / BasicSR save ``{"params_ema": ...}`` or ``{"params": ...}``; others the bare dict."""
    for key in ("params_ema", "params", "state_dict", "model_state_dict"):
        if isinstance(state.get(key), dict):
            return state[key]
    return state


_OLD_RDB = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_BSRGAN_RDB = re.compile(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\.(weight|bias)$")
_NEW_RDB = re.compile(r"^body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)$")


def _rrdb_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Any of the three RRDBNet layouts renamed to ``RRDBNet``'s keys; None when it is not an RRDBNet."""
    out: dict[str, torch.Tensor] = {}
    if "model.0.weight" in state and "model.1.sub.0.RDB1.conv1.0.weight" in state:
        model_idx = sorted({int(k.split(".")[1]) for k in state if re.match(r"^model\.\d+\.weight$", k)})
        n_up = (model_idx[-1] - 4) // 3  # [conv, trunk, (upsample, conv, act) * n, hr conv, act, last conv]
        last_block = max(int(m.group(1)) for k in state if (m := _OLD_RDB.match(k)))
        names = {"model.0": "conv_first", f"model.1.sub.{last_block + 1}": "conv_body", f"model.{3 * n_up + 2}": "conv_hr",
                 f"model.{3 * n_up + 4}": "conv_last", **{f"model.{3 * (k + 1)}": f"conv_up.{k}" for k in range(n_up)}}
        pattern = _OLD_RDB
    elif "conv_first.weight" in state and ("body.0.rdb1.conv1.weight" in state or
                                           "RRDB_trunk.0.RDB1.conv1.weight" in state):
        ups = sorted(int(m.group(2)) for k in state if (m := re.match(r"^(conv_up|upconv)(\d)\.weight$", k)))
        names = {"conv_first": "conv_first", "conv_body": "conv_body", "trunk_conv": "conv_body",
                 "conv_hr": "conv_hr", "HRconv": "conv_hr", "conv_last": "conv_last",
                 **{f"{p}{n}": f"conv_up.{i}" for i, n in enumerate(ups) for p in ("conv_up", "upconv")}}
        pattern = _NEW_RDB if "body.0.rdb1.conv1.weight" in state else _BSRGAN_RDB
    else:
        return None
    for key, value in state.items():
        m = pattern.match(key)
        if m:
            out[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = value
            continue
        head, _, kind = key.rpartition(".")
        if head not in names:
            return None  # a key we do not know: a variant (ESRGAN+ ...) our RRDBNet would load wrongly
        out[f"{names[head]}.{kind}"] = value
    return out


def detect_upscaler(state: dict[str, torch.Tensor], where: str = "state dict") -> UpscalerSpec:
    """Recognise an RRDBNet or SRVGGNetCompact state dict and read its sizes; ``UpscalerError`` otherwise."""
    state = unwrap_state_dict(state)
    ours = _rrdb_to_ours(state)
    if ours is not None and "conv_last.weight" in ours:
        in_ch, out_nc = ours["conv_first.weight"].shape[1], ours["conv_last.weight"].shape[0]
        unshuffle = int(math.isqrt(in_ch // out_nc)) if in_ch in (out_nc * 4, out_nc * 16) else 1
        n_up = sum(1 for k in ours if k.startswith("conv_up.") and k.endswith(".weight"))
        params = {"in_nc": in_ch // unshuffle ** 2, "out_nc": out_nc, "nf": ours["conv_first.weight"].shape[0],
                  "nb": 1 + max(int(k.split(".")[1]) for k in ours if k.startswith("body.")),
                  "gc": ours["body.0.rdb1.conv1.weight"].shape[0], "upsamples": n_up, "unshuffle": unshuffle}
        return UpscalerSpec("RRDBNet", 2 ** n_up // unshuffle, params, ours)
    body = {int(m.group(1)): v for k, v in state.items() if (m := re.match(r"^body\.(\d+)\.weight$", k))}
    if body and all(k.startswith("body.") for k in state) and body.get(0) is not None and body[0].ndim == 4:
        convs = [i for i in sorted(body) if body[i].ndim == 4]
        last = body[convs[-1]]
        in_nc, nf = body[0].shape[1], body[0].shape[0]
        scale = math.isqrt(last.shape[0] // in_nc)
        act = "prelu" if any(body[i].ndim == 1 for i in body) else "leakyrelu"
        params = {"in_nc": in_nc, "out_nc": in_nc, "nf": nf, "num_conv": len(convs) - 2, "scale": scale,
                  "act_type": act}
        if scale * scale * in_nc == last.shape[0]:
            return UpscalerSpec("SRVGGNetCompact", scale, params, dict(state))
    sample = ", ".join(list(state)[:4])
    raise UpscalerError(f"{where}: not an upscaler architecture tunebook knows (keys start {sample} ...). It reads "
                        f"{'; '.join(KNOWN)}. spandrel, installed by setup.sh on CUDA machines, reads many more "
                        "(SwinIR, HAT, DAT, OmniSR, SPAN ...)")


# ---------------------------------------------------------------------------------------------- files
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth`` file; a pickle that needs code to load is refused."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise UpscalerError(f"{path}: not a weights file ({', '.join(WEIGHT_SUFFIXES)} expected)")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code-carrying pickles, EOFError for a cut download
        raise UpscalerError(f"{path}: cannot be read as plain weights ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]}). tunebook does not run pickles that need code; "
                            "use a .safetensors version of the model, or re-save it as plain tensors") from None
    if not isinstance(state, dict):
        raise UpscalerError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return state


def fetch_upscaler(source: str, models_dir: str | os.PathLike, *, endpoint: str | None = None) -> Path:
    """The local weights file of ``source``: a file path, a file in ``models_dir``, a short name from
    ``UPSCALERS``, ``owner/repo/file.pth`` or ``owner/repo`` (its one weights file), downloaded once into
    ``models_dir/<repo name>/``."""
    local = Path(source).expanduser()
    for candidate in (local, Path(models_dir) / source):
        if candidate.is_file():
            return candidate
    repo, filename = UPSCALERS.get(source, (None, None))
    if repo is None:
        parts = source.strip("/").split("/")
        if len(parts) < 2 or (local.suffix.lower() in WEIGHT_SUFFIXES and len(parts) < 3) \
                or source.startswith((".", "/", "~")):
            raise UpscalerError(f"{source}: no such file, and not a short name ({', '.join(UPSCALERS)}), "
                                "owner/repo or owner/repo/file.pth")
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or None
    dest = Path(models_dir) / repo.split("/")[-1]
    if filename and (dest / filename).is_file():
        return dest / filename
    from huggingface_hub import HfApi, hf_hub_download

    try:
        if filename is None:
            files = [f for f in HfApi(endpoint=endpoint).list_repo_files(repo) if f.lower().endswith(WEIGHT_SUFFIXES)]
            if len(files) != 1:
                raise UpscalerError(f"{repo} holds {len(files)} weight files ({', '.join(files[:8])}): name one, "
                                    f"e.g. {repo}/{files[0] if files else 'model.pth'}")
            filename = files[0]
        path = Path(hf_hub_download(repo, filename, local_dir=dest, endpoint=endpoint))
    except UpscalerError:
        raise
    except Exception as exc:  # offline, missing repo or file
        raise UpscalerError(f"could not download {filename or 'the weights'} of {repo} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]}). Check the name and your connection, or put the "
                            f"file in {dest} yourself") from None
    write_text_atomic(dest / "source.json", json.dumps({"repo": repo, "file": filename}, indent=1))
    return path


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class Upscaler:
    """A loaded model: ``module`` maps (n, 3, h, w) in [0, 1] to (n, 3, h*scale, w*scale)."""

    module: nn.Module
    scale: int
    description: str
    device: torch.device
    dtype: torch.dtype
    multiple: int = 1  # input sides must be a multiple of this (pixel-unshuffle models)
    notes: list[str] = field(default_factory=list)

    def to_float32(self) -> None:
        self.module.float()
        self.dtype = torch.float32


def spandrel_available() -> bool:
    try:
        import spandrel  # noqa: F401  (imports torchvision: only where torchvision matches torch)
    except Exception:
        return False
    return True


def _load_with_spandrel(state: dict) -> tuple[nn.Module, int, str, int, bool] | None:
    if not spandrel_available():
        return None
    from spandrel import ImageModelDescriptor, ModelLoader

    try:
        desc = ModelLoader().load_from_state_dict(state)
    except Exception:
        return None
    if not isinstance(desc, ImageModelDescriptor):
        return None
    multiple = getattr(desc.size_requirements, "multiple_of", 1) or 1
    return desc.model, int(desc.scale), f"{desc.architecture.name} x{desc.scale} (spandrel)", multiple, desc.supports_half


def load_upscaler(source: str, models_dir: str | os.PathLike = ".", device: str = "auto", *,
                  endpoint: str | None = None) -> Upscaler:
    """Fetch and load an upscaler; on a GPU in fp16 when the architecture supports it."""
    path = fetch_upscaler(source, models_dir, endpoint=endpoint)
    state = unwrap_state_dict(read_state_dict(path))
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    loaded = _load_with_spandrel(state)
    if loaded is None:
        spec = detect_upscaler(state, str(path))
        module = spec.build()
        module.load_state_dict(spec.state, strict=True)
        unshuffle = int(spec.params.get("unshuffle", 1))
        loaded = module, spec.scale, spec.describe(), unshuffle, True
    module, scale, description, multiple, half = loaded
    dtype = torch.float16 if dev.type == "cuda" and half else torch.float32
    return Upscaler(module.eval().to(dev, dtype), scale, description, dev, dtype, multiple)


# ---------------------------------------------------------------------------------------------- running
def auto_tile(device: torch.device) -> int:
    """Input tile side: 512 on a GPU with 8 GB free (a 4x RRDBNet peaks near 2 GB per 512-px tile in fp16),
    256 on smaller GPUs and on the CPU (cache-friendly); out-of-memory halves it again."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 512 if free >= 8 << 30 else 256
    return 256


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _run_tile(up: Upscaler, tile: torch.Tensor) -> torch.Tensor:
    out = up.module(tile.to(up.device, up.dtype))
    if up.dtype != torch.float32 and not torch.isfinite(out).all():  # fp16 overflow: this model needs fp32
        up.to_float32()
        up.notes.append("fp16 overflowed (inf/NaN), so the model runs in fp32 from here on")
        out = up.module(tile.to(up.device, torch.float32))
    return out.float().clamp_(0, 1).cpu()


@torch.inference_mode()
def upscale_tensor(up: Upscaler, image: torch.Tensor, tile: int, overlap: int = 16,
                   on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """(1, 3, h, w) -> (1, 3, h*s, w*s), ``tile``-pixel input tiles each seen with ``overlap`` pixels of context
    (so no seams); the output is assembled on the CPU."""
    _, c, h, w = image.shape
    s = up.scale
    out = torch.zeros((1, c, h * s, w * s), dtype=torch.float32)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            cy0, cx0 = max(0, y0 - overlap), max(0, x0 - overlap)
            cy1, cx1 = min(h, y1 + overlap), min(w, x1 + overlap)
            result = _run_tile(up, image[:, :, cy0:cy1, cx0:cx1])
            oy, ox = (y0 - cy0) * s, (x0 - cx0) * s
            out[:, :, y0 * s:y1 * s, x0 * s:x1 * s] = result[:, :, oy:oy + (y1 - y0) * s, ox:ox + (x1 - x0) * s]
            if on_tile is not None:
                on_tile()
    return out


def upscale_image(up: Upscaler, image: Image.Image, tile: int = 0, min_tile: int = 32) -> Image.Image:
    """``image`` (RGB) enlarged ``up.scale`` times, tiled; an out-of-memory GPU halves the tile (noted in
    ``up.notes``) down to ``min_tile`` before giving up with an error that says so."""
    tile = tile or auto_tile(up.device)
    arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    h, w = arr.shape[2:]
    m = up.multiple
    pad_h, pad_w = (-h) % m, (-w) % m
    if pad_h or pad_w:  # pixel-unshuffle models need sides divisible by their factor
        arr = F.pad(arr, (0, pad_w, 0, pad_h), mode="replicate")
    tile = max(m, tile - tile % m)
    while True:
        try:
            out = upscale_tensor(up, arr, tile, overlap=max(16, m))
            break
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not _is_oom(exc) or tile // 2 < min_tile:
                if _is_oom(exc):
                    raise UpscalerError(f"{up.description} does not fit on {up.device} even with {tile}-px tiles; "
                                        "free GPU memory or use device 'cpu'") from None
                raise
            if up.device.type == "cuda":
                torch.cuda.empty_cache()
            tile //= 2
            up.notes.append(f"out of GPU memory: tile reduced to {tile} px")
    out = out[:, :, :h * up.scale, :w * up.scale]
    pixels = (out[0].permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


# ---------------------------------------------------------------------------------------------- tiny models
def tiny_rrdb_state(layout: str = "new", scale: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random RRDBNet (8 features, 2 blocks, growth 4) state dict in the ``new`` or ``old`` key layout."""
    torch.manual_seed(seed)
    unshuffle = {4: 1, 2: 2, 1: 4}[scale]
    state = RRDBNet(nf=8, nb=2, gc=4, upsamples=2, unshuffle=unshuffle).state_dict()
    if layout == "new":
        return {re.sub(r"^conv_up\.(\d)", lambda m: f"conv_up{int(m.group(1)) + 1}", k): v for k, v in state.items()}
    renamed = {}
    for key, value in state.items():
        m = _NEW_RDB.match(key)
        head, _, kind = key.rpartition(".")
        if m:
            renamed[f"model.1.sub.{m.group(1)}.RDB{m.group(2)}.conv{m.group(3)}.0.{m.group(4)}"] = value
        else:
            old = {"conv_first": "model.0", "conv_body": "model.1.sub.2", "conv_up.0": "model.3", "conv_up.1": "model.6",
                   "conv_hr": "model.8", "conv_last": "model.10"}[head]
            renamed[f"{old}.{kind}"] = value
    return renamed


def tiny_srvgg_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random SRVGGNetCompact x4 (8 features, 2 convs, PReLU); saved as Real-ESRGAN does (under ``params``)."""
    torch.manual_seed(seed)
    net = SRVGGNetCompact(nf=8, num_conv=2, scale=4)
    with torch.no_grad():  # a small residual: the output stays close to the nearest-upscaled input (a readable demo)
        net.body[-1].weight.mul_(0.02)
        net.body[-1].bias.zero_()
    return net.state_dict()


def save_tiny_upscaler(path: str | os.PathLike, arch: str = "rrdb-new", scale: int = 4) -> Path:
    """A tiny random upscaler file for the demo and tests (``.pth`` as plain tensors, or ``.safetensors``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = tiny_srvgg_state() if arch == "srvgg" else tiny_rrdb_state(arch.split("-")[-1], scale)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"params": state} if arch == "srvgg" else state, str(path))
    return path
