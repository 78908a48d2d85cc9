"""Sample images during training: when, from which prompts, into which files, without disturbing the run.

Owns ``SamplingConfig`` (the ``[sampling]`` section of a training config; kohya's ``--sample_every_n_steps``,
``--sample_every_n_epochs``, ``--sample_at_first``, ``--sample_prompts``) and ``TrainingSamples``, whose
``maybe_sample`` the training loop calls after every optimizer step (and once before the first).

Guarantees: only the main process samples; the models are put in eval mode and back; every RNG the run uses
(torch CPU/CUDA, numpy, Python) is restored afterwards, so a run with sampling gives bit-identical weights to
one without; the models are used where they are (no second copy), and the memory sampling used is released.
Files: ``samples/step-000120_epoch-003_prompt-01.png`` with A1111 parameters; each round is logged as a
``samples`` event listing its images. A resumed run does not sample a step again whose images exist.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from helpers.config import option
from helpers.generation.prompts import PromptFileError, PromptSpec, parse_prompt_lines, read_prompts
from helpers.generation.samplers import SamplerError, find_sampler

_NAME = re.compile(r"^step-(\d+)_epoch-(\d+)_prompt-(\d+)\.png$")


@dataclass
class SamplingConfig:
    """Images drawn from the model while it trains."""

    prompts: list[str] = option([], help="prompts, one per line, in kohya syntax: text --n negative --w 1024 --h 1024 "
                                "--d seed --s steps --l CFG --ss sampler (empty and no file = no samples)")
    prompt_file: str = option("", help="a kohya-style prompt file (.txt), one prompt per line; added after the "
                              "prompts above", kind="path")
    every_n_epochs: int = option(1, min=0, max=100_000, help="sample at the end of every N epochs (0 = off)")
    every_n_steps: int = option(0, min=0, max=10_000_000, help="also every N optimizer steps (0 = off)")
    at_start: bool = option(True, help="sample once before training (the base model, to compare against)")
    sampler: str = option("Euler a", help="sampler for lines without --ss (Euler a, DPM++ 2M Karras, DDIM, …)")
    steps: int = option(25, min=1, max=1000, help="sampling steps for lines without --s")
    cfg: float = option(7.0, min=0.0, max=100.0, help="CFG scale for lines without --l")
    seed: int = option(1234, min=0, max=2**32 - 1, help="prompt i uses seed + i unless its line sets --d (fixed "
                       "seeds: the same noise at every step, so images compare)")
    negative_prompt: str = option("", help="negative prompt for lines without --n", group="advanced")
    width: int = option(0, min=0, max=8192, help="0 = the training resolution", group="advanced")
    height: int = option(0, min=0, max=8192, help="0 = the training resolution", group="advanced")
    rescale_cfg: float = option(0.0, min=0.0, max=1.0, help="rescaled CFG φ (0.7 for v-prediction / zero-SNR)",
                                group="advanced")

    def problems(self) -> dict[str, str]:
        """Problems a form shows before the run starts (prompt lines and file parsed, sampler known)."""
        problems = {}
        try:
            find_sampler(self.sampler)
        except SamplerError as exc:
            problems["sampler"] = str(exc)
        try:
            parse_prompt_lines(self.prompts, "prompts")
        except PromptFileError as exc:
            problems["prompts"] = str(exc)
        if self.prompt_file:
            try:
                read_prompts(self.prompt_file)
            except PromptFileError as exc:
                problems["prompt_file"] = str(exc)
        for name in ("width", "height"):
            if getattr(self, name) % 8:
                problems[name] = f"must be a multiple of 8 (or 0 = training resolution), got {getattr(self, name)}"
        return problems


def sample_file_name(step: int, epoch: int, prompt_index: int) -> str:
    return f"step-{step:06d}_epoch-{epoch:03d}_prompt-{prompt_index + 1:02d}.png"


@contextlib.contextmanager
def preserve_rng(device: torch.device):
    """Every RNG a training run draws from is as it was when the block ends."""
    import numpy as np

    devices = [device] if device.type == "cuda" else []
    python, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy_state)


@contextlib.contextmanager
def eval_mode(models: list[torch.nn.Module]):
    """Models in eval mode for the block, each back in the mode it had."""
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


class TrainingSamples:
    """The sampling plan of one run (see module docstring); inactive when there are no prompts.

    ``trackers`` (TensorBoard / W&B, anything with ``log_image(step, tag, image)``) also get each image.
    """

    def __init__(self, cfg: SamplingConfig, folder: Path, *, resolution: int, run_name: str, enabled: bool = True,
                 zero_terminal_snr: bool = False, log_event=None, trackers: list | None = None):
        self.cfg, self.folder, self.run_name = cfg, Path(folder), run_name
        self.prompts: list[PromptSpec] = parse_prompt_lines(cfg.prompts, "sampling.prompts")
        if cfg.prompt_file:
            self.prompts += read_prompts(cfg.prompt_file)
        self.enabled = enabled and bool(self.prompts) and bool(cfg.at_start or cfg.every_n_steps or cfg.every_n_epochs)
        self.resolution, self.zero_terminal_snr = resolution, zero_terminal_snr
        self.log_event = log_event or (lambda *_a, **_k: None)
        self.trackers = trackers if trackers is not None else []
        self.sampled: set[int] = self._steps_on_disk()

    def _steps_on_disk(self) -> set[int]:
        """Steps whose every prompt already has an image (an earlier start of this run made them)."""
        found: dict[int, set[int]] = {}
        for path in self.folder.glob("step-*.png") if self.folder.is_dir() else []:
            m = _NAME.match(path.name)
            if m:
                found.setdefault(int(m.group(1)), set()).add(int(m.group(3)) - 1)
        return {step for step, done in found.items() if done >= set(range(len(self.prompts)))}

    def due(self, step: int, epoch: int, epoch_end: bool = False, final: bool = False) -> bool:
        """Whether to sample after optimizer step ``step`` of (0-based) epoch ``epoch``; step 0 = before training."""
        c = self.cfg
        if not self.enabled or step in self.sampled:
            return False
        if step == 0:
            return c.at_start
        return (final or (c.every_n_steps > 0 and step % c.every_n_steps == 0)
                or (epoch_end and c.every_n_epochs > 0 and (epoch + 1) % c.every_n_epochs == 0))

    def maybe_sample(self, bundle, step: int, epoch: int, *, epoch_end: bool = False, final: bool = False,
                     weights=None) -> list[Path]:
        """The training loop's one call: sample every prompt if step ``step`` of epoch ``epoch`` (0-based, the one
        in progress) is due; ``epoch_end`` when this step finished the epoch, ``final`` for the last step.
        ``weights``: a context-manager factory that swaps other weights in while sampling (the EMA's, when on);
        entered only when a round is due, so no step pays for the swap."""
        if not self.due(step, epoch, epoch_end, final):
            return []
        with weights() if weights is not None else contextlib.nullcontext():
            return self.sample(bundle, step=step, epoch=epoch + 1 if step else 0)

    def settings(self, spec: PromptSpec, index: int):
        """The ``ImageSettings`` for one prompt: the config's defaults, then what its line sets."""
        from helpers.generation.pipeline import ImageSettings

        c = self.cfg
        base = ImageSettings(prompt=spec.prompt, negative_prompt=c.negative_prompt, steps=c.steps, cfg=c.cfg,
                             sampler=c.sampler, seed=c.seed + index, width=c.width or self.resolution,
                             height=c.height or self.resolution, rescale_cfg=c.rescale_cfg)
        return replace(base, **spec.overrides())

    def sample(self, bundle, *, step: int, epoch: int) -> list[Path]:
        """One image per prompt from the models as they are now, written to ``samples/``.

        A generation failure (out of memory) is logged as a warning and training goes on: samples are never
        worth losing the run for.
        """
        from helpers.generation.pipeline import GenerationError, ImageGenerator

        started = time.monotonic()
        generator = ImageGenerator(bundle, model_name=self.run_name, zero_terminal_snr=self.zero_terminal_snr)
        files, records = [], []
        with preserve_rng(generator.device), eval_mode([bundle.unet, *bundle.text_encoders]):
            try:
                for index, spec in enumerate(self.prompts):
                    (image,) = generator.generate(self.settings(spec, index),
                                                  extra={"Training step": str(step), "Epoch": str(epoch)})
                    path = image.save(self.folder / sample_file_name(step, epoch, index))
                    files.append(path)
                    records.append({"file": path.name, "prompt_index": index, "prompt": spec.prompt})
                    for tracker in self.trackers:
                        tracker.log_image(step, f"samples/prompt-{index + 1:02d}", image.image)
            except GenerationError as exc:
                self.log_event("warning", message=f"samples at step {step} skipped: {exc}")
                return files
            finally:
                generator.close()
        self.sampled.add(step)
        self.log_event("samples", step=step, epoch=epoch, images=records,
                       seconds=round(time.monotonic() - started, 2))
        return files


# ---------------------------------------------------------------- showing them


def add_sample_rounds(records: list[dict], rounds: dict[int, dict]) -> bool:
    """Fold a log's ``samples`` events into ``rounds`` (step -> event); True when something new arrived."""
    new = False
    for rec in records:
        if rec.get("event") == "samples":
            rounds[int(rec["step"])] = rec
            new = True
    return new


def samples_over_time(folder: Path, rounds: dict[int, dict], columns: int = 8, cell_size: int = 160):
    """A grid per prompt over time: a row per prompt, a column per sampling round (the newest ``columns``)."""
    from PIL import Image

    from helpers.ui.gallery import labelled_grid

    steps = sorted(rounds)[-columns:]
    prompts: dict[int, str] = {}
    for step in steps:
        prompts.update({i["prompt_index"]: i["prompt"] for i in rounds[step]["images"]})
    rows = []
    for index in sorted(prompts):
        row = []
        for step in steps:
            item = next((i for i in rounds[step]["images"] if i["prompt_index"] == index), None)
            path = folder / item["file"] if item else None
            row.append(Image.open(path).convert("RGB") if path is not None and path.exists() else None)
        rows.append(row)
    labels = [f"step {s} · epoch {rounds[s]['epoch']}" if s else "start (base model)" for s in steps]
    return labelled_grid(rows, labels, [prompts[i] for i in sorted(prompts)], title="samples over time",
                         cell_size=cell_size)
