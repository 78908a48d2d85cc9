"""Model checkpoints and training state: when to save, how to save atomically, how to resume exactly.

- Model checkpoints (``checkpoints/<run>-e0003.safetensors``, ``-s00001200``, final ``<run>.safetensors``):
  single-file safetensors in the original layout (written by ``helpers.models.save_single_file``), every N
  epochs and/or steps, keeping the last K.
- Training state (``state/step-00001200/``): trained weights, optimizer, LR schedule, grad scaler, EMA, every RNG,
  the data position (epoch, batches done in it) and the config it ran with; every N steps and every N
  minutes. A state is built in a temporary folder and renamed into place (a directory rename is atomic),
  ``trainer.json`` written last, so a kill at any moment leaves either the previous state or the new one,
  never half of one. ``find_latest_state`` picks the newest complete one.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from helpers.config import option
from helpers.workspace import PERIODIC, STATE_PREFIX, checkpoint_name, list_states  # noqa: F401  RunPaths names files


@dataclass
class SaveConfig:
    """When the run writes model files and resumable state."""

    save_every_n_epochs: int = option(1, min=0, max=100_000, help="write a model file every N epochs (0 = only "
                                      "at the end)")
    save_every_n_steps: int = option(0, min=0, max=10_000_000, help="also every N optimizer steps (0 = off)",
                                     group="advanced")
    keep_last: int = option(3, min=0, max=10_000, help="keep the newest N periodic model files (0 = all); the "
                            "final one is always kept")
    save_precision: Literal["fp16", "bf16", "fp32"] = option("fp16", help="precision of saved model files "
                                                             "(fp16 = 6.9 GB for SDXL)")
    state_every_n_steps: int = option(500, min=0, max=10_000_000, help="write resumable training state every N "
                                      "optimizer steps (0 = off)")
    state_every_n_minutes: float = option(30.0, min=0.0, max=100_000.0, unit="min",
                                          help="also write state when this long has passed since the last one "
                                          "(0 = off)")
    keep_last_states: int = option(1, min=1, max=100, help="training states kept (SDXL + AdamW: ~30 GB each)",
                                   group="advanced")


class SaveError(RuntimeError):
    """A checkpoint or state could not be written; the previous one is intact."""


# ---------------------------------------------------------------- when


def model_save_due(step: int, epoch_done: int | None, *, every_n_epochs: int, every_n_steps: int) -> bool:
    """Whether to write a model file now: after optimizer step ``step``, or at the end of ``epoch_done``."""
    if epoch_done is not None:
        return every_n_epochs > 0 and epoch_done % every_n_epochs == 0
    return every_n_steps > 0 and step % every_n_steps == 0


def state_save_due(step: int, last_state_time: float, *, every_n_steps: int, every_n_minutes: float,
                   now: float | None = None) -> bool:
    """Whether to write training state after optimizer step ``step``."""
    now = time.monotonic() if now is None else now
    by_steps = every_n_steps > 0 and step % every_n_steps == 0
    by_time = every_n_minutes > 0 and now - last_state_time >= every_n_minutes * 60
    return by_steps or by_time


def prune_checkpoints(folder: Path, run_name: str, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` periodic model files (an EMA file and its ``-noema`` twin count
    as one); returns the deleted paths. Final files (``<run>.safetensors``, ``<run>-noema.safetensors``) stay."""
    if keep_last <= 0:
        return []
    saves: dict[str, list[Path]] = {}
    for path in folder.glob(f"{run_name}-*.safetensors"):
        match = PERIODIC.match(path.name[len(run_name):])
        if match:
            saves.setdefault(match.group(1), []).append(path)
    newest_first = sorted(saves.values(), key=lambda paths: max(p.stat().st_mtime_ns for p in paths), reverse=True)
    gone = [path for paths in newest_first[keep_last:] for path in paths]
    for path in gone:
        path.unlink(missing_ok=True)
    return gone


# ---------------------------------------------------------------- training state


def capture_rng_states() -> dict:
    """Every random generator the process owns (torch CPU/CUDA, numpy, Python)."""
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    # numpy's key array as a tensor, so the state file loads with torch.load(weights_only=True)
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    import numpy as np

    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _bytes_of(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _optimizer_bytes(state) -> int:
    """Bytes of every tensor in a (possibly nested, e.g. bitsandbytes) optimizer state dict."""
    if torch.is_tensor(state):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_optimizer_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_optimizer_bytes(v) for v in state)
    return 0


class DiskSpaceShort(SaveError):
    """The disk cannot hold the next state: nothing was written and the previous state is intact."""


def state_bytes(weights: dict[str, torch.Tensor], optimizer_state: dict,
                ema_weights: dict[str, torch.Tensor] | None = None) -> int:
    """Bytes a training state takes on disk (weights, optimizer state, EMA; the small files aside)."""
    return _bytes_of(weights) + _optimizer_bytes(optimizer_state) + _bytes_of(ema_weights or {})


def check_state_space(folder: Path, needed: int, step: int) -> None:
    """Raise ``DiskSpaceShort`` before writing anything when ``folder``'s disk cannot hold ``needed`` bytes more
    (the previous state stays until the new one is complete, so both must fit for a moment)."""
    free = shutil.disk_usage(folder).free
    if free < needed * 1.05 + (64 << 20):
        raise DiskSpaceShort(
            f"not enough disk space for the training state at step {step} in {folder}: needs {needed / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free. Nothing was written and the previous state is intact. Free space (delete old "
            "checkpoints/states, latent caches, Jupyter's .Trash-*: `python -m helpers.cleanup`) and training saves "
            "at its next chance; or stop and resume with --resume latest")


def _left_behind(path: Path) -> bool:
    """Whether the process that made this ``.tmp-/.aside-/.old-...-<pid>`` folder is gone (or is this one, which
    saves one state at a time): only then is the folder a leftover, never another process's save in progress."""
    try:
        pid = int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def clear_interrupted_saves(folder: Path) -> None:
    """Tidy what a process killed mid-save left: half-written ``.tmp-`` folders and retired ``.old-`` states are
    deleted; a state moved aside for a same-step replacement (``.aside-``) goes back when the new one never
    arrived. Complete states, and the folders of a save still running in another process, are never touched."""
    if not folder.is_dir():
        return
    for aside in [p for p in folder.glob(f".aside-{STATE_PREFIX}*") if _left_behind(p)]:
        name = aside.name[len(".aside-"):].rsplit("-", 1)[0]
        if not (folder / name).exists() and (aside / "trainer.json").exists():
            try:
                os.replace(aside, folder / name)
            except OSError:  # another process (a second GPU rank) put it back first
                pass
        else:
            shutil.rmtree(aside, ignore_errors=True)
    for stale in [*folder.glob(f".tmp-{STATE_PREFIX}*"), *folder.glob(f".old-{STATE_PREFIX}*")]:
        if _left_behind(stale):
            shutil.rmtree(stale, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_state_files(tmp: Path, weights: dict[str, torch.Tensor], optimizer_state: dict, trainer: dict,
                       ema_weights: dict[str, torch.Tensor] | None) -> None:
    from safetensors.torch import save_file

    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    files = ["weights.safetensors", "optimizer.pt", "trainer.pt"]
    if ema_weights is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in ema_weights.items()}, str(tmp / "ema.safetensors"))
        files.append("ema.safetensors")
    summary = {k: v for k, v in trainer.items() if isinstance(v, (int, float, str, bool, dict, list))
               and k not in ("scheduler", "scaler", "rng")}
    torch.save({k: trainer.get(k) for k in ("scheduler", "scaler", "rng")}, tmp / "trainer.pt")
    for name in files:
        _fsync(tmp / name)
    (tmp / "trainer.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")  # last
    _fsync(tmp / "trainer.json")


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished state into place. A state already there for this step (an earlier attempt) is moved
    aside first and deleted after, so at every moment one complete state of this step exists or can be restored."""
    aside = final.parent / f".aside-{final.name}-{os.getpid()}"
    if final.exists():
        os.replace(final, aside)
    os.replace(tmp, final)
    _fsync(final.parent)  # the rename itself reaches the disk
    shutil.rmtree(aside, ignore_errors=True)


def retire_state(path: Path) -> None:
    """Delete a state so that a kill half way never leaves a partial folder that looks complete: it is renamed
    out of the listing first (atomic), then removed."""
    old = path.parent / f".old-{path.name}-{os.getpid()}"
    os.replace(path, old)
    shutil.rmtree(old, ignore_errors=True)


def save_training_state(folder: Path, step: int, *, weights: dict[str, torch.Tensor], optimizer_state: dict,
                        trainer: dict, keep_last: int = 1, ema_weights: dict[str, torch.Tensor] | None = None
                        ) -> Path:
    """Write ``folder/step-NNNNNNNN`` atomically and prune older states; returns the new state folder.

    ``trainer`` holds the scheduler/scaler state dicts, RNG states, counters (epoch, batch_in_epoch, step) and
    ``config`` (the run's config as plain data), split into ``trainer.pt`` (tensors) and ``trainer.json``.
    ``ema_weights`` (the EMA shadows, when EMA is on) go to ``ema.safetensors``. A kill -9 at any moment leaves
    the previous state (or the new one) complete; a disk too small raises ``DiskSpaceShort`` before a byte is
    written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    clear_interrupted_saves(folder)  # a killed save's leftovers would count against the free space
    final = folder / f"{STATE_PREFIX}{step:08d}"
    tmp = folder / f".tmp-{STATE_PREFIX}{step:08d}-{os.getpid()}"
    needed = state_bytes(weights, optimizer_state, ema_weights)
    check_state_space(folder, needed, step)
    try:
        _write_state_files(tmp, weights, optimizer_state, trainer, ema_weights)
        _move_into_place(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise DiskSpaceShort(f"disk full while saving training state at step {step} in {folder}: needs about "
                                 f"{needed / 1e9:.2f} GB; the half-written state was removed and the previous one "
                                 "is intact: free space (`python -m helpers.cleanup`); training saves at its next "
                                 "chance") from None
        raise
    for old in list_states(folder)[:-keep_last]:
        retire_state(old)
    return final


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def state_save_warnings(folder: Path, size: int, seconds: float, every_n_minutes: float) -> list[str]:
    """What to tell the person after a state save: the next one will not fit the disk (said now, while there is
    time to free space), or saves take so long that the time cadence costs more than a tenth of the run."""
    out = []
    free = shutil.disk_usage(folder).free
    if free < size * 1.05 + (64 << 20):
        out.append(f"the next training state ({size / 1e9:.1f} GB) will not fit: {free / 1e9:.1f} GB free on "
                   f"{folder}. Free space before the next save (`python -m helpers.cleanup`: old checkpoints and "
                   "states, latent caches, Jupyter's .Trash-*), or that save is skipped")
    if every_n_minutes > 0 and seconds > 0.1 * every_n_minutes * 60:
        out.append(f"a state save took {seconds:.0f} s, over a tenth of saving.state_every_n_minutes = "
                   f"{every_n_minutes:g}: raise it (a slow network volume?)")
    return out


def find_latest_state(folder: Path) -> Path | None:
    """The newest complete training state, or None (a state a killed same-step save moved aside comes back)."""
    clear_interrupted_saves(folder)
    states = list_states(folder)
    return states[-1] if states else None


def load_training_state(path: Path) -> dict:
    """``{"weights", "optimizer", "scheduler", "scaler", "rng", ...counters, "config"}`` (and ``"ema"`` when the run
    keeps one) from a state folder."""
    from safetensors.torch import load_file

    if not (path / "trainer.json").exists():
        raise SaveError(f"{path} is not a complete training state (no trainer.json): choose another or 'latest'")
    out = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
    out["weights"] = load_file(str(path / "weights.safetensors"))
    # weights_only: a state folder from elsewhere cannot run code when loaded
    out["optimizer"] = torch.load(path / "optimizer.pt", weights_only=True)
    out.update(torch.load(path / "trainer.pt", weights_only=True))
    if (path / "ema.safetensors").exists():
        out["ema"] = load_file(str(path / "ema.safetensors"))
    return out


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts."""
    keys = sorted(set(saved) | set(current))
    out = []
    for key in keys:
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


# keys that change what a resumed run computes are everything else; these only change files and speed
RESUME_SAFE_KEYS = ("saving.", "data.num_workers", "data.persistent_workers", "model.allow_pickle", "max_steps",
                    "epochs", "validation.every_n_steps", "validation.timesteps")
