"""What fills the disk, and deleting for real what you tick: old states, intermediate checkpoints, latent caches,
Jupyter's trash — never a run's final model without a second tick, never anything outside the workspace.

Jupyter's delete does not free space: it moves files to a trash on the same disk (``<mount>/.Trash-<uid>``, or
``~/.local/share/Trash`` on the home disk), which is why the guide deletes with ``rm -rf`` in a terminal. The
report counts those trash folders; the cleanup empties them like ``rm -rf`` does. ``disk_report`` sizes the
workspace by category (models, datasets, runs split into final models / intermediate checkpoints / states /
the rest, caches, exports, trash); ``plan_cleanup`` lists exactly what the ticks select; ``apply_cleanup``
deletes that list and nothing else. A run whose trainer is still writing keeps its half-written states, and
latent caches stay while any run trains.

    python -m helpers.cleanup report
    python -m helpers.cleanup clean --old-states --intermediate-checkpoints --trash          # preview
    python -m helpers.cleanup clean --old-states --intermediate-checkpoints --trash --yes    # delete
    python -m helpers.cleanup delete PATH [PATH ...] --yes       # paths inside the workspace only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from helpers.config import option
from helpers.workspace import RunPaths, Workspace

ACTIVE_S = 600  # a run whose status changed this recently is training: its newest files are in use
LEFTOVERS = (".tmp-", ".old-", ".aside-")  # a killed state save's folders (see training.checkpoints)


@dataclass
class CleanupConfig:
    """What to delete for real (nothing is ticked by default; deleted files do not go to a trash)."""

    format_version: ClassVar[int] = 1
    old_states: bool = option(False, help="every run's training states but its newest (and the leftovers of "
                              "killed saves): the newest is what a resume needs")
    states_of_finished_runs: bool = option(False, help="all training states of runs that have their final model "
                                           "(you can no longer resume or extend those runs)")
    intermediate_checkpoints: bool = option(False, help="the periodic model files (every N epochs/steps); the "
                                            "final model stays")
    latent_caches: bool = option(False, help="cached latents (cache/latents): rebuilt when a run needs them")
    trash: bool = option(False, help="Jupyter's trash (.Trash-*): what its delete only moved aside")
    final_models: bool = option(False, help="the runs' FINAL model files too (upload or download them first)",
                                group="danger")
    confirm_final_models: bool = option(False, help="yes, delete the final models: the second tick they need",
                                        group="danger")
    runs: list[str] = option(factory=list, help="only these runs (empty = every run)")


@dataclass
class Removal:
    path: Path
    bytes: int
    what: str  # "old state", "intermediate checkpoint", "final model", "latent cache", "trash", "path"


@dataclass
class CleanupPlan:
    removals: list[Removal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removals)

    def summary(self) -> str:
        if not self.removals:
            return "nothing to delete" + "".join(f"\n  note: {n}" for n in self.notes)
        by_what: dict[str, list[Removal]] = {}
        for r in self.removals:
            by_what.setdefault(r.what, []).append(r)
        lines = [f"{len(self.removals)} item(s), {self.bytes / 1e9:.2f} GB:"]
        for what, items in by_what.items():
            lines.append(f"  {what}: {len(items)}, {sum(i.bytes for i in items) / 1e9:.2f} GB")
            lines += [f"    {i.path}" for i in items[:8]] + ([f"    ... {len(items) - 8} more"] if len(items) > 8 else [])
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


class CleanupError(ValueError):
    """A path the cleanup refuses (outside the workspace, or a final model without the second tick)."""


# ---------------------------------------------------------------- sizes


def size_of(path: Path) -> int:
    """Bytes a file or folder holds (links are not followed: a linked base model is not counted twice)."""
    try:
        if path.is_symlink() or path.is_file():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for base, _dirs, files in os.walk(path, onerror=lambda e: None):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total


def mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def trash_folders(ws: Workspace) -> list[Path]:
    """Where Jupyter's delete (send2trash) puts files of this workspace: ``.Trash-*`` at the top of its disk or
    in the workspace itself, and the home trash when the workspace is on the home disk."""
    found = set()
    for top in {ws.root, mount_point(ws.root)}:
        found |= {p for p in top.glob(".Trash*") if p.is_dir()}
    home = Path.home() / ".local" / "share" / "Trash"
    try:
        if home.is_dir() and home.stat().st_dev == ws.root.stat().st_dev:
            found.add(home)
    except OSError:
        pass
    return sorted(found)


def run_is_active(run: RunPaths, now: float | None = None) -> bool:
    try:
        status = json.loads(run.status.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    recent = (now or time.time()) - float(status.get("updated") or 0) < ACTIVE_S
    return recent and status.get("state") in ("starting", "loading", "caching", "training")


def _runs(ws: Workspace, only: list[str] | None = None) -> list[RunPaths]:
    names = ws.list_runs() if ws.runs.is_dir() else []
    return [ws.run(n) for n in names if not only or n in only]


def disk_report(ws: Workspace) -> dict[str, int]:
    """Bytes by category; ``runs:*`` split what the runs hold; ``free`` is the disk's free space."""
    runs = _runs(ws)
    finals = sum(size_of(p) for r in runs for p in r.final_models())
    periodic = sum(size_of(p) for r in runs for p in r.periodic_checkpoints())
    states = sum(size_of(r.state) for r in runs if r.state.is_dir())
    latents = size_of(ws.cache / "latents") if (ws.cache / "latents").is_dir() else 0
    report = {"models": size_of(ws.models), "datasets": size_of(ws.datasets), "runs: final models": finals,
              "runs: intermediate checkpoints": periodic, "runs: training states": states,
              "runs: logs, samples, other": max(0, size_of(ws.runs) - finals - periodic - states),
              "cache: latents": latents, "cache: other": max(0, size_of(ws.cache) - latents),
              "exports": size_of(ws.exports), "Jupyter trash": sum(size_of(p) for p in trash_folders(ws))}
    report["free"] = shutil.disk_usage(ws.root).free
    return report


def format_report(report: dict[str, int]) -> str:
    used = sum(v for k, v in report.items() if k != "free")
    lines = [f"workspace: {used / 1e9:.1f} GB used here, {report['free'] / 1e9:.1f} GB free on the disk"]
    lines += [f"  {k:<32} {v / 1e9:8.2f} GB" for k, v in report.items() if k != "free" and v]
    return "\n".join(lines)


# ---------------------------------------------------------------- what the ticks select


def _state_removals(run: RunPaths, everything: bool, active: bool) -> list[Removal]:
    states = run.states()
    chosen = states if everything else states[:-1]
    out = [Removal(p, size_of(p), "old state") for p in chosen]
    if run.state.is_dir() and not active:  # a live trainer may be writing its .tmp- folder right now
        out += [Removal(p, size_of(p), "leftover of a killed save") for p in run.state.iterdir()
                if p.name.startswith(LEFTOVERS)]
    return out


def plan_cleanup(ws: Workspace, cfg: CleanupConfig) -> CleanupPlan:
    """Exactly what ``cfg``'s ticks select, with its size; nothing is deleted here."""
    plan = CleanupPlan()
    runs = _runs(ws, cfg.runs or None)
    unknown = sorted(set(cfg.runs) - {r.name for r in runs})
    if unknown:
        plan.notes.append(f"no such run(s): {', '.join(unknown)} (runs: {', '.join(ws.list_runs()) or 'none'})")
    active = {r.name for r in runs if run_is_active(r)}
    for run in runs:
        finished = bool(run.final_models())
        if cfg.old_states or (cfg.states_of_finished_runs and finished):
            plan.removals += _state_removals(run, cfg.states_of_finished_runs and finished, run.name in active)
        if cfg.intermediate_checkpoints:
            plan.removals += [Removal(p, size_of(p), "intermediate checkpoint") for p in run.periodic_checkpoints()]
        if cfg.final_models and cfg.confirm_final_models:
            plan.removals += [Removal(p, size_of(p), "final model") for p in run.final_models()]
    if cfg.final_models and not cfg.confirm_final_models:
        plan.notes.append("final models are kept: tick confirm_final_models too (upload or download them first)")
    latents = ws.cache / "latents"
    if cfg.latent_caches and latents.is_dir():
        if active:
            plan.notes.append(f"latent caches kept: {', '.join(sorted(active))} is training and may read them")
        else:
            plan.removals += [Removal(p, size_of(p), "latent cache") for p in sorted(latents.iterdir())]
    if cfg.trash:
        plan.removals += [Removal(p, size_of(p), "trash") for p in trash_folders(ws)]
    if active and (cfg.old_states or cfg.states_of_finished_runs):
        plan.notes.append(f"{', '.join(sorted(active))} is training: its newest state and any save in progress stay")
    return plan


def check_deletable(ws: Workspace, path: Path, final_models_too: bool = False) -> Path:
    """``path`` made absolute (a link stays the link), or ``CleanupError``: it must be inside the workspace (or be
    one of its disk's Jupyter trash folders), not the workspace's own folders, and hold no final model unless
    ``final_models_too``."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    real = path.parent.resolve() / path.name
    trash = trash_folders(ws)
    inside = real.is_relative_to(ws.root) or any(real == t or real.is_relative_to(t) for t in trash)
    if not inside:
        raise CleanupError(f"{path} is outside the workspace {ws.root}: refused (the cleanup deletes only "
                           "workspace files and Jupyter's trash)")
    structure = {ws.root, ws.datasets, ws.models, ws.runs, ws.exports, ws.cache, ws.root / "workspace.toml"}
    if real in structure:
        raise CleanupError(f"{path} is one of the workspace's own folders: refused (pick what is inside it)")
    if not final_models_too:
        finals = [f for r in _runs(ws) for f in r.final_models() if f == real or f.is_relative_to(real)]
        if finals:
            raise CleanupError(f"{path} holds a run's final model ({finals[0].name}): refused without the second "
                               "confirmation (final_models + confirm_final_models, or --final-models-too)")
    return path


def apply_cleanup(ws: Workspace, plan: CleanupPlan) -> dict:
    """Delete every item of ``plan`` for real (``rm -rf``, no trash); returns what was freed and any failures.
    Each path is checked again first: a plan edited by hand cannot reach outside the workspace."""
    freed, deleted, failed = 0, [], []
    for item in plan.removals:
        try:
            path = check_deletable(ws, item.path, final_models_too=item.what == "final model")
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                continue
        except (CleanupError, OSError) as exc:
            failed.append(f"{item.path}: {exc}")
            continue
        freed += item.bytes
        deleted.append(str(item.path))
    return {"deleted": deleted, "freed_gb": round(freed / 1e9, 3), "failed": failed,
            "free_gb": round(shutil.disk_usage(ws.root).free / 1e9, 1)}


def plan_paths(ws: Workspace, paths: list[str], final_models_too: bool = False) -> CleanupPlan:
    """A plan of given paths (the CLI's ``delete``): each one checked, a refused one raises ``CleanupError``."""
    checked = [check_deletable(ws, Path(p), final_models_too) for p in paths]
    return CleanupPlan([Removal(p, size_of(p), "path") for p in checked if p.exists() or p.is_symlink()])


# ---------------------------------------------------------------- notebook and command line


def show_disk(ws: Workspace) -> dict[str, int]:
    """Notebook 00: the report as text and a bar chart."""
    from IPython.display import display

    from helpers.ui.charts import bar_chart

    report = disk_report(ws)
    print(format_report(report))
    shown = {k: v / 1e9 for k, v in report.items() if v}
    display(bar_chart(list(shown), list(shown.values()), title="disk: the workspace and what is free",
                      ylabel="GB", horizontal=True))
    return report


def run_cleanup(ws: Workspace, cfg: CleanupConfig) -> dict | None:
    """Notebook 00's cleanup cell: show what the ticks select and delete exactly that (nothing ticked: nothing)."""
    plan = plan_cleanup(ws, cfg)
    print(plan.summary())
    if not plan.removals:
        return None
    result = apply_cleanup(ws, plan)
    print(f"deleted {len(result['deleted'])} item(s), freed {result['freed_gb']:.2f} GB; "
          f"{result['free_gb']:.1f} GB free now")
    for failure in result["failed"]:
        print(f"  not deleted: {failure}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.cleanup", description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", help="workspace root (default: TUNEBOOK_WORKSPACE or the platform default)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("report", help="what fills the disk")
    clean = sub.add_parser("clean", help="delete what the flags select (a preview without --yes)")
    for name in ("old-states", "states-of-finished-runs", "intermediate-checkpoints", "latent-caches", "trash",
                 "final-models", "confirm-final-models"):
        clean.add_argument(f"--{name}", action="store_true")
    clean.add_argument("--run", action="append", default=[], help="only this run (repeatable)")
    clean.add_argument("--yes", action="store_true", help="delete for real")
    delete = sub.add_parser("delete", help="delete these paths inside the workspace (a preview without --yes)")
    delete.add_argument("paths", nargs="+")
    delete.add_argument("--final-models-too", action="store_true", help="allow paths that hold a final model")
    delete.add_argument("--yes", action="store_true", help="delete for real")
    args = parser.parse_args(argv)
    try:
        ws = Workspace.open(args.workspace, create=False)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "report":
        print(format_report(disk_report(ws)))
        return 0
    try:
        if args.cmd == "delete":
            plan = plan_paths(ws, args.paths, args.final_models_too)
        else:
            flags = {k: getattr(args, k) for k in ("old_states", "states_of_finished_runs", "intermediate_checkpoints",
                                                   "latent_caches", "trash", "final_models", "confirm_final_models")}
            plan = plan_cleanup(ws, CleanupConfig(**flags, runs=args.run))
    except CleanupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(plan.summary())
    if not args.yes:
        print("(a preview: add --yes to delete these for real)" if plan.removals else "")
        return 0
    result = apply_cleanup(ws, plan)
    print(f"deleted {len(result['deleted'])}, freed {result['freed_gb']:.2f} GB, {result['free_gb']:.1f} GB free")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
