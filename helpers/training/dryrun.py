"""``--dry-run``: everything a run would need, checked before the meter runs — as JSON, as text, as an exit code.

``dry_run_report(cfg, ws, gpu=..., gpus=..., price=...)`` validates the config, scans the dataset, reads the base
model's sizes, and adds the pre-flight estimate (``training.preflight``): VRAM by part and which of 24/48/80 GB it
fits, optimizer steps, seconds per step, hours and cost, and the disk the run fills (model files kept, states,
latent cache) against what is free. ``errors`` are what would stop the run or waste it (it ``would_start`` only
without them); ``warnings`` cost time or money. The command line (``python -m helpers.training RUN.toml --dry-run
[--json]``) exits 0 when it would start, 2 otherwise; notebook 04 prints ``format_report`` of the same dict.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from helpers.training import preflight

GPU_CLASSES = (24, 48, 80)  # the VRAM sizes people rent: RTX 3090/4090, A6000/L40S, A100/H100
# VRAM of the cards the estimator knows (GB as sold); a name that says "40GB" / "80GB" wins over this
GPU_VRAM_GB = {"H200": 141, "H100": 80, "A100": 80, "L40S": 48, "L40": 48, "A6000": 48, "A40": 48, "4090": 24,
               "3090": 24, "A10": 24, "L4": 24, "T4": 16, "V100": 32, "3060": 12}


def gpu_memory_gb(name: str) -> float | None:
    import re

    sized = re.search(r"(\d{2,3})\s*GB", name.upper())
    if sized:
        return float(sized.group(1))
    upper = name.upper()
    return next((float(v) for k, v in GPU_VRAM_GB.items() if k in upper), None)


def known_gpu(name: str) -> bool:
    from helpers.training.calibration import read_table, same_card

    return preflight.gpu_peak_tflops(name) is not None or any(same_card(r["gpu"], name) for r in read_table())


def plan_steps(images_per_epoch: int, epochs: int, batch_size: int, accumulation: int, gpus: int,
               max_steps: int) -> int:
    """Optimizer steps of the run: per epoch, the batches every GPU takes, grouped by gradient accumulation
    (buckets may add a partial batch each; this counts full ones plus one)."""
    batches = math.ceil(images_per_epoch / (batch_size * gpus))
    steps = epochs * math.ceil(batches / accumulation)
    return min(steps, max_steps) if max_steps else steps


def free_disk_gb(path: Path) -> float | None:
    for folder in (path, *path.parents):
        if folder.exists():
            return round(shutil.disk_usage(folder).free / 1e9, 1)
    return None


def _model_saves(cfg, epochs: int, steps: int) -> int:
    s = cfg.saving
    by_epoch = (epochs - 1) // s.save_every_n_epochs if s.save_every_n_epochs else 0  # the last epoch: the final
    by_step = (steps - 1) // s.save_every_n_steps if s.save_every_n_steps else 0
    return by_epoch + by_step


def disk_needs(cfg, est: preflight.Estimate, steps: int, images_per_epoch: int) -> tuple[dict[str, float], float]:
    """GB the run fills at its fullest (``preflight.estimate_disk`` with this config's saving settings), and GB
    of its first files (latent cache, one model file, one state): less free than that and it fails early."""
    s, trained = cfg.saving, est.trained_params
    states = (s.state_every_n_steps > 0 and steps >= s.state_every_n_steps) or s.state_every_n_minutes > 0
    parts = preflight.estimate_disk(
        params=est.params, trained_params=trained, optimizer=cfg.optimizer.optimizer,
        full_half=cfg.precision.full_half_precision, save_precision=s.save_precision,
        model_saves=_model_saves(cfg, cfg.epochs, steps), keep_last=s.keep_last,
        twin_files=cfg.ema.enabled and cfg.ema.save_trained_too, ema=cfg.ema.enabled, state_saves=states,
        keep_last_states=s.keep_last_states,
        cached_latent_images=images_per_epoch * (2 if cfg.data.flip else 1) if cfg.data.cache_latents == "disk" else 0,
        resolution=cfg.data.resolution)
    one_state = preflight.state_gb(trained, cfg.optimizer.optimizer, cfg.precision.full_half_precision,
                                   cfg.ema.enabled) if states else 0.0
    one_model = sum(est.params.values()) * (4 if s.save_precision == "fp32" else 2) / 1e9
    return parts, parts["latent_cache"] + one_model + one_state


def _dataset_images(cfg, ws, errors: list[str]) -> int:
    from helpers.config import ConfigError
    from helpers.training.data import DataError, scan_dataset
    from helpers.training.loop import resolve_dataset
    from helpers.training.validation import held_out_of

    if not cfg.data.dataset:
        return 0
    root = resolve_dataset(cfg.data.dataset, ws.models if ws else None)
    try:
        held_out = held_out_of(cfg, root)
        items, report = scan_dataset(root, caption_extension=cfg.data.caption_extension,
                                     default_repeats=cfg.data.repeats, exclude=frozenset(held_out))
    except DataError as exc:
        errors.append(f"data.dataset: {exc}")
        return 0
    except ConfigError as exc:  # a held-out slice that leaves too few images to train on
        errors.extend(f"{key}: {message}" for key, message in exc.problems.items())
        return 0
    if not items:
        errors.append(f"data.dataset: no trainable images in {cfg.data.dataset}")
    return sum(item.repeats for item in items)


def _check_model(cfg, ws, est: preflight.Estimate, errors: list[str], warnings: list[str]) -> None:
    from helpers.models.loader import REPO_ID
    from helpers.training.components import resolve_base_model

    source = cfg.model.base_model
    if not source or Path(resolve_base_model(source, ws.models if ws else None)).exists():
        return
    if REPO_ID.match(source):
        warnings.append(f"model.base_model: {source} is downloaded from the Hub when training starts "
                        f"(≈ {sum(est.params.values()) * 2 / 1e9:.0f} GB)")
    else:
        errors.append(f"model.base_model: {source}: no such file, folder or workspace model, and not a Hub id")


def dry_run_report(cfg, ws, *, gpu: str | None = None, gpus: int = 1, price: float | None = None,
                   run_dir: Path | None = None) -> dict:
    """The pre-flight of ``cfg`` as plain data (see the module docstring for what each key means)."""
    from helpers.config import validate

    errors = [f"{key}: {message}" for key, message in validate(cfg).items()]
    warnings: list[str] = []
    vram_of_gpu = None
    if gpu is None:
        gpu, vram_of_gpu = preflight.detect_gpu()
        if gpu is None:
            warnings.append("no GPU here and none named: time and cost not estimated (--gpu NAME, e.g. A6000)")
    elif not known_gpu(gpu):
        errors.append(f"--gpu {gpu}: the estimator does not know this GPU; it knows "
                      f"{', '.join(preflight.GPU_PEAK_TFLOPS)}")
    else:
        vram_of_gpu = gpu_memory_gb(gpu)
    per_epoch = _dataset_images(cfg, ws, errors)
    est = preflight.estimate_config(cfg, ws, gpu_name=gpu, vram_gb=vram_of_gpu, price_per_hour=price, gpus=gpus,
                                    total_images=per_epoch * cfg.epochs)
    _check_model(cfg, ws, est, errors, warnings)
    steps = plan_steps(per_epoch, cfg.epochs, cfg.batch_size, cfg.optimizer.gradient_accumulation_steps, gpus,
                       cfg.max_steps)
    images_per_step = cfg.batch_size * cfg.optimizer.gradient_accumulation_steps
    seconds_per_step = images_per_step / est.images_per_s if est.images_per_s else None
    if est.fits is False:
        errors.append(f"VRAM: ≈ {est.vram_gb:.1f} GB does not fit the {vram_of_gpu:.0f} GB of {gpu}: "
                      + est.notes[0].split(": ", 1)[-1])
    warnings += [note for note in est.notes if not note.startswith("does not fit")]
    disk, first = disk_needs(cfg, est, steps, per_epoch)
    free = free_disk_gb(Path(run_dir) if run_dir else (ws.runs if ws else Path.cwd()))
    _check_disk(disk, first, free, errors, warnings)
    hours = steps * seconds_per_step / 3600 if seconds_per_step else None
    return {"would_start": not errors, "errors": errors, "warnings": warnings,
            "gpu": gpu, "gpus": gpus, "gpu_vram_gb": vram_of_gpu,
            "vram_gb": est.vram_gb, "vram_by_part": est.vram_parts,
            "fits": {str(size): est.vram_gb <= size * 0.95 for size in GPU_CLASSES},
            "total_images": est.total_images, "steps": steps, "images_per_step": images_per_step * gpus,
            "images_per_s": round(est.images_per_s * gpus, 3) if est.images_per_s else None,
            "seconds_per_step": round(seconds_per_step, 3) if seconds_per_step else None,
            "speed_source": est.speed_source or None,
            "hours": round(hours, 3) if hours is not None else None, "price_per_hour": price,
            "cost": round(hours * price, 2) if hours is not None and price else None,
            "disk_gb": round(sum(disk.values()), 1), "disk_by_part": disk, "disk_free_gb": free,
            "params": est.params, "model_source": est.model_source, "trained_params": est.trained_params,
            "trains": cfg.network.algo if getattr(cfg, "network", None) and cfg.network.enabled else "full"}


def _check_disk(disk: dict[str, float], first: float, free: float | None, errors: list[str],
                warnings: list[str]) -> None:
    """Not even the first files fit: an error (the run would fail at its first save). Not everything it keeps
    fits: a warning (it runs, and the cleanup or fewer kept files make room)."""
    if free is None:
        return
    total = sum(disk.values())
    if first > free:
        errors.append(f"disk: the latent cache, the first model file and the first training state need ≈ "
                      f"{first:.1f} GB, {free:.1f} GB free: free space (`python -m helpers.cleanup`) or rent a bigger "
                      "disk")
    elif total > free:
        warnings.append(f"disk: the run keeps ≈ {total:.1f} GB at its fullest, {free:.1f} GB free: lower "
                        "saving.keep_last / keep_last_states, upload and delete as it goes, or free space")


def exit_code(report: dict) -> int:
    """0 when the run would start, 2 otherwise (the training CLI's code for a bad config)."""
    return 0 if report["would_start"] else 2


def _gb(value) -> str:
    return "?" if value is None else f"{value:.1f}"


def format_report(report: dict) -> str:
    """The dry run for a person: what it needs, what it costs, what stops it."""
    where = f"{report['gpu']}" + (f" ×{report['gpus']}" if report["gpus"] > 1 else "") if report["gpu"] else "no GPU"
    parts = ", ".join(f"{k} {v:.1f}" for k, v in report["vram_by_part"].items() if v)
    fits = ", ".join(f"{size} GB: {'yes' if ok else 'no'}" for size, ok in report["fits"].items())
    lines = [f"pre-flight on {where}",
             f"  VRAM ≈ {report['vram_gb']:.1f} GB per GPU ({parts}) — fits {fits}",
             f"  sizes: {report['model_source']}"]
    if report.get("trains", "full") != "full":  # an adapter: what it trains, and that the base stays frozen
        lines.append(f"  trains: a {report['trains']} adapter, {report['trained_params'] / 1e6:.1f} M parameters "
                     "(base frozen: no base gradients or optimizer state)")
    if not report["total_images"]:
        lines.append("  time: no images to count yet (choose a dataset)")
    elif report["hours"] is not None:
        cost = f", ≈ {report['cost']:.2f} at {report['price_per_hour']:g}/h" if report["cost"] is not None else ""
        lines.append(f"  time: {report['steps']:,} steps × {report['seconds_per_step']:.2f} s ≈ {report['hours']:.2f} h "
                     f"({report['images_per_s']:.2f} images/s, {report['speed_source']}){cost}")
    else:
        lines.append(f"  {report['steps']:,} optimizer steps ({report['total_images']:,} images)")
    disk = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in report["disk_by_part"].items() if v)
    lines.append(f"  disk: needs ≈ {report['disk_gb']:.1f} GB ({disk or 'nothing kept'}), {_gb(report['disk_free_gb'])} "
                 "GB free")
    lines += [f"  warning: {w}" for w in report["warnings"]] + [f"  error: {e}" for e in report["errors"]]
    lines.append("  → it would start" if report["would_start"] else "  → it would not start: fix the errors above")
    return "\n".join(lines)
