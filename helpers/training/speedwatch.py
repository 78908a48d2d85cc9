"""The speed watch: measured training speed against the pre-flight's estimate, and the likely cause when far below.

``assess_speed`` reads recent step records of ``log.jsonl`` (``images_per_s`` is the GPU's work alone, ``data_s``
the wait for the next batch) and the run's ``preflight.json``. Two slow-downs have a cause we can name:

- the GPU waits for data (a starved loader: image decoding and resizing on too few CPU workers) — raise
  ``data.num_workers``, or cache latents;
- the GPU itself is far below the estimate while its memory is nearly full — on Windows/WSL the driver then
  spills into shared system memory and steps get 10-100x slower (kohya_ss#1730: 140 s/it, 1.2 s/it once it
  fitted); on Linux the allocator thrashes — save memory: gradient checkpointing, a smaller batch, AdamW8bit,
  the EMA on the CPU.

Otherwise, far below with memory to spare points at the machine: another process on the GPU, a power or thermal
limit, or fp32 compute. Pure functions; the notebook monitor shows the verdict.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

FAR_BELOW = 0.5  # measured / estimated under this is worth a word
STARVED = 0.25  # the GPU waiting for data more than this share of the time
MEMORY_FULL = 0.92  # peak allocation over this share of the GPU's memory
WARMUP_STEPS = 5  # the first steps (cuDNN autotune, allocator growth, loader start) say little


@dataclass(frozen=True)
class SpeedVerdict:
    measured: float  # images/s, median of the recent steps
    expected: float | None
    cause: str | None  # what slows it down, with the setting to change; None = no problem seen

    @property
    def ratio(self) -> float | None:
        return self.measured / self.expected if self.expected else None


def assess_speed(records: list[dict], preflight: dict | None, *, num_workers: int | None = None,
                 window: int = 30) -> SpeedVerdict | None:
    """The verdict on the last ``window`` steps (after warm-up), or None before there are enough of them."""
    steps = [r for r in records if "event" not in r and r.get("images_per_s") and r.get("step", 0) > WARMUP_STEPS]
    steps = steps[-window:]
    if len(steps) < 5:
        return None
    measured = statistics.median(r["images_per_s"] for r in steps)
    compute = statistics.median(r.get("s_per_step", 0.0) for r in steps)
    waiting = statistics.median(r.get("data_s", 0.0) for r in steps)
    preflight = preflight or {}
    expected = preflight.get("images_per_s")
    effective = measured * compute / (compute + waiting) if compute + waiting else measured
    if waiting > STARVED * (compute + waiting):
        workers = f" (now {num_workers})" if num_workers is not None else ""
        return SpeedVerdict(effective, expected, (
            f"the GPU waits for data {100 * waiting / (compute + waiting):.0f} % of the time ({waiting:.2f} s a step): "
            f"the loader is starved. Raise data.num_workers{workers}, or cache latents (data.cache_latents = "
            "'disk', needs random_crop off)"))
    if not expected or measured >= FAR_BELOW * expected:
        return SpeedVerdict(measured, expected, None)
    peak = max((r.get("peak_memory_gb") or 0.0) for r in steps)
    vram = preflight.get("gpu_vram_gb")
    if vram and peak >= MEMORY_FULL * vram:
        return SpeedVerdict(measured, expected, (
            f"{measured:.2f} images/s, {100 * measured / expected:.0f} % of the estimate, with memory nearly full "
            f"({peak:.1f} of {vram:.0f} GB): VRAM is likely spilling into shared memory (Windows/WSL) or the "
            "allocator is thrashing. Turn on precision.gradient_checkpointing, lower batch_size, use AdamW8bit, or "
            "ema.device = 'cpu'"))
    return SpeedVerdict(measured, expected, (
        f"{measured:.2f} images/s, {100 * measured / expected:.0f} % of the estimate ({preflight.get('speed_source')}),"
        " with memory to spare: check nvidia-smi for another process on the GPU, a low power limit or a hot GPU, and "
        "that precision.mixed_precision is bf16/fp16 (fp32 skips the tensor cores)"))
