"""Measured training speeds (``speeds.toml`` beside this module): the pre-flight's figure when one matches.

A row is one measurement: the GPU, the model family, the resolution, the mode (``full`` fine-tune or ``lora``), the
batch size, the seconds per batch (``s_per_step``, gradient accumulation 1), and where it came from. Optional
settings (gradient checkpointing, cached latents, text-encoder training, optimizer, EMA, mixed precision) narrow a
row: when a row states one, the run must match it. Among matching rows the one stating the most settings wins.
``add_measurement`` appends a row (``bench/train_step.py --calibrate``).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

import tomllib

from helpers.changes import write_text_atomic

TABLE = Path(__file__).with_name("speeds.toml")
REQUIRED = ("gpu", "arch", "resolution", "mode", "batch_size")
OPTIONAL = ("gradient_checkpointing", "cached_latents", "train_text_encoder", "optimizer", "mixed_precision", "ema")


@dataclass(frozen=True)
class MeasuredSpeed:
    images_per_s: float
    s_per_step: float
    source: str  # "RTX 4090, OneTrainer: https://..." — what the estimate quotes

    @property
    def label(self) -> str:
        return f"measured ({self.source})"


VARIANTS = {"TI", "SUPER", "ADA"}  # words after a model number that make another card (3090 Ti, RTX 6000 Ada)


def normalise_gpu(name: str) -> list[str]:
    """'NVIDIA GeForce RTX 3090 Ti' -> ['3090', 'TI']; 'NVIDIA A100-SXM4-80GB' -> ['A100', 'SXM4', '80GB']."""
    words = re.split(r"[^A-Z0-9]+", name.upper())
    return [w for w in words if w and w not in ("NVIDIA", "GEFORCE", "RTX", "TESLA")]


def same_card(row_gpu: str, device: str) -> bool:
    """Whether a table row's GPU names this device: its words appear in order, and no variant word follows."""
    card, dev = normalise_gpu(row_gpu), normalise_gpu(device)
    for i in range(len(dev) - len(card) + 1):
        if card and dev[i:i + len(card)] == card:
            after = dev[i + len(card)] if i + len(card) < len(dev) else ""
            return after not in VARIANTS
    return False


def read_table(path: Path | None = None) -> list[dict]:
    """The rows of a speeds table (default ``TABLE``; an unreadable table is an empty one: the FLOP model still
    answers)."""
    try:
        data = tomllib.loads((path or TABLE).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return []
    return [row for row in data.get("speed", []) if all(k in row for k in REQUIRED) and row.get("s_per_step")]


def find_measured_speed(gpu_name: str | None, run: dict, rows: list[dict] | None = None) -> MeasuredSpeed | None:
    """The best matching measurement for ``run`` (keys of ``REQUIRED`` but ``gpu``, and any of ``OPTIONAL``) on
    this GPU, or None."""
    if not gpu_name:
        return None
    best, best_score = None, -1
    for row in read_table() if rows is None else rows:
        if not same_card(str(row["gpu"]), gpu_name):  # a 3090 row is not a 3090 Ti's
            continue
        if any(row[k] != run.get(k) for k in REQUIRED if k != "gpu"):
            continue
        stated = [k for k in OPTIONAL if k in row]
        if any(row[k] != run.get(k) for k in stated):
            continue
        score = len(stated) * 10 + len(normalise_gpu(str(row["gpu"])))  # settings stated, then the card's detail
        if score > best_score:
            best, best_score = row, score
    if best is None:
        return None
    where = ", ".join(x for x in (str(best["gpu"]), best.get("software", ""), best.get("source", "")) if x)
    return MeasuredSpeed(round(best["batch_size"] / best["s_per_step"], 4), float(best["s_per_step"]), where)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def add_measurement(row: dict, path: Path | None = None) -> None:
    """Append a measured row (``REQUIRED`` keys, ``s_per_step``, ``source``; any ``OPTIONAL`` ones) atomically."""
    missing = [k for k in (*REQUIRED, "s_per_step", "source") if k not in row]
    if missing:
        raise ValueError(f"a speed row needs {', '.join(missing)}")
    path = path or TABLE
    row = {**row, "date": row.get("date", datetime.date.today().isoformat())}
    block = "\n[[speed]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in row.items() if v is not None)
    text = path.read_text(encoding="utf-8") if path.exists() else "format_version = 1\n"
    write_text_atomic(path, text.rstrip("\n") + "\n" + block)
