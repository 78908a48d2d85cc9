"""The A1111 ``parameters`` text in every PNG we write, and a parser for it.

Owns ``GenerationParameters`` (what made an image), ``format_parameters`` / ``parse_parameters`` (the text
AUTOMATIC1111's webui writes and its "PNG Info" tab, civitai and ComfyUI read) and ``save_png`` /
``read_png_parameters``.

The format, as A1111 writes it (``modules/processing.py::create_infotext``, ``modules/infotext_utils.py``):

    <prompt, may span lines; LoRAs as <lora:name:strength> tags>
    Negative prompt: <negative, may span lines>            (line left out when empty)
    Steps: 25, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 1024x1024, Model hash: 0123456789, Model: name, ...

The last line is ``key: value`` pairs joined by ", "; a value holding ``,``, ``:`` or a newline is written as a
JSON string. A reader takes the last line as parameters only when it holds at least three pairs.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from helpers.changes import write_bytes_atomic

# A1111's pattern for one "key: value" pair of the last line (infotext_utils.re_param_code)
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_LORA_TAG = re.compile(r"\s*<lora:([^:<>]+):([-+0-9.eE]+)>")
PNG_KEY = "parameters"
SOFTWARE = "tunebook"


@dataclass
class GenerationParameters:
    """Everything needed to make an image again (and what A1111 shows for it)."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 25
    sampler: str = "Euler a"
    cfg: float = 7.0
    seed: int = 0
    width: int = 1024
    height: int = 1024
    model: str = ""
    model_hash: str = ""
    loras: list[tuple[str, float]] = field(default_factory=list)  # (name, strength), as <lora:name:strength>
    lora_hashes: dict[str, str] = field(default_factory=dict)  # name -> first 12 hex of the data sha256
    clip_skip: int = 1
    rescale_cfg: float = 0.0
    zero_terminal_snr: bool = False
    extra: dict[str, str] = field(default_factory=dict)  # further pairs, e.g. "Training step"


def _quote(value: str) -> str:
    """A1111's ``quote``: JSON-quote values that would break the comma-separated line."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def _number(x: float) -> str:
    return f"{x:g}"


def format_parameters(p: GenerationParameters) -> str:
    """The ``parameters`` text A1111 writes for these settings."""
    prompt = p.prompt.strip()
    tags = " ".join(f"<lora:{name}:{_number(s)}>" for name, s in p.loras)
    prompt = f"{prompt} {tags}".strip() if tags else prompt
    pairs: list[tuple[str, str]] = [("Steps", str(p.steps)), ("Sampler", p.sampler), ("CFG scale", _number(p.cfg)),
                                    ("Seed", str(p.seed)), ("Size", f"{p.width}x{p.height}")]
    if p.model_hash:
        pairs.append(("Model hash", p.model_hash))
    if p.model:
        pairs.append(("Model", p.model))
    if p.clip_skip > 1:
        pairs.append(("Clip skip", str(p.clip_skip)))
    if p.rescale_cfg:
        pairs.append(("CFG Rescale phi", _number(p.rescale_cfg)))
    if p.zero_terminal_snr:
        pairs.append(("Noise Schedule", "Zero Terminal SNR"))
    pairs.append(("RNG", "CPU"))  # initial noise comes from a CPU generator (A1111's "RNG source: CPU")
    if p.lora_hashes:
        pairs.append(("Lora hashes", ", ".join(f"{k}: {v}" for k, v in p.lora_hashes.items())))
    pairs += list(p.extra.items())
    pairs.append(("Version", SOFTWARE))
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in pairs)
    negative = f"\nNegative prompt: {p.negative_prompt.strip()}" if p.negative_prompt.strip() else ""
    return f"{prompt}{negative}\n{line}"


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def parse_parameter_text(text: str) -> dict[str, str]:
    """A1111's reading of a ``parameters`` text: {"Prompt", "Negative prompt", key: value, "Size-1", "Size-2"}."""
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < 3:  # not a parameter line: it belongs to the prompt
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    out = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PAIR.findall(last):
        value = _unquote(value.strip())
        size = _SIZE.match(value)
        if size:
            out[f"{key}-1"], out[f"{key}-2"] = size.group(1), size.group(2)
        out[key] = value
    return out


def parse_parameters(text: str) -> GenerationParameters:
    """Read an A1111 ``parameters`` text back into :class:`GenerationParameters` (LoRA tags split out)."""
    raw = parse_parameter_text(text)
    loras = [(m.group(1), float(m.group(2))) for m in _LORA_TAG.finditer(raw["Prompt"])]
    sampler = raw.get("Sampler", "")
    if raw.get("Schedule type", "").lower() == "karras" and not sampler.endswith("Karras"):
        sampler += " Karras"  # A1111 >= 1.9 writes the schedule separately
    hashes = {}
    for item in raw.get("Lora hashes", "").split(","):
        if ":" in item:
            name, _, digest = item.partition(":")
            hashes[name.strip()] = digest.strip()
    known = {"Prompt", "Negative prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Size-1",
             "Size-2", "Model hash", "Model", "Clip skip", "CFG Rescale phi", "Noise Schedule", "RNG", "Lora hashes",
             "Version"}
    return GenerationParameters(
        prompt=_LORA_TAG.sub("", raw["Prompt"]).strip(), negative_prompt=raw["Negative prompt"],
        steps=int(raw.get("Steps", 0)), sampler=sampler, cfg=float(raw.get("CFG scale", 0)),
        seed=int(raw.get("Seed", 0)), width=int(raw.get("Size-1", 0)), height=int(raw.get("Size-2", 0)),
        model=raw.get("Model", ""), model_hash=raw.get("Model hash", ""), loras=loras, lora_hashes=hashes,
        clip_skip=int(raw.get("Clip skip", 1)), rescale_cfg=float(raw.get("CFG Rescale phi", 0)),
        zero_terminal_snr=raw.get("Noise Schedule", "") == "Zero Terminal SNR",
        extra={k: v for k, v in raw.items() if k not in known})


def png_bytes(image, parameters: str) -> bytes:
    """The image as PNG bytes with the ``parameters`` text chunk (tEXt, or iTXt for non-Latin-1 text)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_KEY, parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(image, path: str | os.PathLike, parameters: str) -> Path:
    """Write a PNG with its parameters atomically: a kill leaves the old file or the whole new one."""
    return write_bytes_atomic(path, png_bytes(image, parameters))


def read_png_parameters(path: str | os.PathLike) -> str | None:
    """The ``parameters`` text of a PNG (ours or A1111's), or None."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # text chunks after the image data are read with it
        return img.info.get(PNG_KEY)
