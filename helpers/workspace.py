"""The on-disk layout of a tunebook project: one folder holds datasets, base models, runs and exports.

Every notebook opens the workspace and reads what the earlier ones wrote; nothing passes between notebooks
through kernel globals. The root is chosen once (``TUNEBOOK_WORKSPACE``, else ``/workspace/tunebook`` on
Vast.ai/RunPod where ``/workspace`` is the persistent volume, else ``./workspace`` beside the repo).

    <root>/
      workspace.toml          marker + format version
      datasets/<name>/        images with .txt captions (kohya N_name subfolders allowed)
      models/<name>/          base models (single files or diffusers folders) + model.json (hash, kind)
      runs/<name>/            one training run: config.toml, status.json, log.jsonl, checkpoints/,
                              samples/, state/ ... (``RunPaths`` names every file)
      exports/                LoRAs, merged checkpoints, model cards ready to upload
      cache/                  Hugging Face cache, latent caches, downloads in progress
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers.changes import write_text_atomic

MARKER = "workspace.toml"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
STATE_PREFIX = "step-"  # a run's resumable states: state/step-00001200/


def pointer_file() -> Path:
    """Where setup.sh / 00_setup remember the chosen workspace (inside the venv: one per install)."""
    return Path(sys.prefix) / "tunebook-workspace.txt"


def default_root() -> Path:
    """Where the workspace lives: TUNEBOOK_WORKSPACE, else the remembered choice, else the platform default."""
    env = os.environ.get("TUNEBOOK_WORKSPACE")
    if env:
        return Path(env).expanduser()
    try:
        remembered = pointer_file().read_text(encoding="utf-8").strip()
    except OSError:
        remembered = ""
    if remembered:
        return Path(remembered)
    if Path("/workspace").is_dir() and os.access("/workspace", os.W_OK):
        return Path("/workspace/tunebook")
    drive = Path("/content/drive/MyDrive")
    if drive.is_dir():  # Colab with Google Drive mounted: keep work off the wiped /content
        return drive / "tunebook"
    return Path(__file__).resolve().parent.parent / "workspace"


def check_name(name: str, what: str = "name") -> str:
    if not NAME_RE.match(name or ""):
        raise ValueError(f"{what} {name!r} is not usable as a folder name: use letters, digits, '.', '_' or "
                         "'-' (up to 100 characters, not starting with '.' or '-')")
    return name


def name_problem(name: str, key: str, what: str = "name") -> dict[str, str]:
    """{key: why} when ``name`` is not usable as a workspace folder name, else {} (a form's ``check``)."""
    try:
        check_name(name, what)
    except ValueError as exc:
        return {key: str(exc)}
    return {}


@dataclass(frozen=True)
class RunPaths:
    """Every file of one training run: the one place that names them (trainer, runner and monitor ask here).

        <run>/
          config.toml     the settings it runs with (written before the process starts)
          job.json        the detached process: pid, command line, start time, whether a stop was asked
          stdout.log      the process's own stdout/stderr (tracebacks, out-of-memory kills)
          status.json     the trainer's current state, rewritten atomically: what a monitor polls
          log.jsonl       one JSON object per optimizer step or event, append-only
          checkpoints/    single-file models (periodic ones and the final ``<run>.safetensors``)
          samples/        pictures generated during training
          state/          resumable training states (``step-00001200/``)
          preflight.json  the pre-flight estimate the trainer started with (the monitor's speed watch reads it)
          summary.json    what the finished run did and cost (steps, hours, paid time)
          uploads.json    which files went off the machine, where, with their sha256
    """

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def job(self) -> Path:
        return self.root / "job.json"

    @property
    def stdout(self) -> Path:
        return self.root / "stdout.log"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files (Vast's portal TensorBoard reads the workspace)."""
        return self.root / "tensorboard"

    @property
    def preflight(self) -> Path:
        return self.root / "preflight.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads.json"

    def checkpoint(self, *, epoch: int | None = None, step: int | None = None, noema: bool = False) -> Path:
        """A model file of this run (periodic by epoch or step, or the final one)."""
        return self.checkpoints / checkpoint_name(self.name, epoch=epoch, step=step, noema=noema)

    def final_models(self) -> list[Path]:
        """The final model file(s) that exist: ``<run>.safetensors`` and its ``-noema`` twin."""
        return [p for p in (self.checkpoint(), self.checkpoint(noema=True)) if p.is_file()]

    def periodic_checkpoints(self) -> list[Path]:
        """Intermediate model files (every N epochs/steps), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.glob(f"{self.name}-*.safetensors")
                 if PERIODIC.match(p.name[len(self.name):])]
        return sorted(found, key=lambda p: p.stat().st_mtime_ns)

    def states(self) -> list[Path]:
        """Complete resumable states, oldest first."""
        return list_states(self.state)

    def create(self) -> RunPaths:
        for d in (self.root, self.checkpoints, self.samples, self.state):
            d.mkdir(parents=True, exist_ok=True)
        return self

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike) -> RunPaths:
        """The run a checkpoint file belongs to (``<run>/checkpoints/<file>``)."""
        return cls(Path(checkpoint).parent.parent)


PERIODIC = re.compile(r"^-([es]\d+)(-noema)?\.safetensors$")  # after the run name


def checkpoint_name(run_name: str, *, epoch: int | None = None, step: int | None = None, noema: bool = False) -> str:
    """``<run>-e0003``, ``<run>-s00001200`` or final ``<run>``; ``noema`` names the raw-weights twin of an EMA
    file (``-noema`` suffix)."""
    suffix = "-noema.safetensors" if noema else ".safetensors"
    if epoch is not None:
        return f"{run_name}-e{epoch:04d}{suffix}"
    if step is not None:
        return f"{run_name}-s{step:08d}{suffix}"
    return f"{run_name}{suffix}"


def list_states(folder: Path) -> list[Path]:
    """Complete state folders (with ``trainer.json``, written last), oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{STATE_PREFIX}*") if p.is_dir() and (p / "trainer.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(STATE_PREFIX):]))


@dataclass(frozen=True)
class Workspace:
    """One project's folders. ``Workspace.open()`` finds or creates it."""

    root: Path

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def hf_cache(self) -> Path:
        return self.cache / "huggingface"

    @classmethod
    def open(cls, root: str | os.PathLike | None = None, create: bool = True) -> Workspace:
        root = Path(root).expanduser() if root else default_root()
        ws = cls(root.resolve())
        if create:
            ws.init()
        elif not (ws.root / MARKER).exists():
            raise FileNotFoundError(f"no tunebook workspace at {ws.root}: run `bash setup.sh` or "
                                    "`python -m helpers.workspace init DIR` first")
        return ws

    def init(self) -> Workspace:
        for d in (self.root, self.datasets, self.models, self.runs, self.exports, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        marker = self.root / MARKER
        if not marker.exists():
            write_text_atomic(marker, "# tunebook workspace\nformat_version = 1\n")
        return self

    def dataset(self, name: str) -> Path:
        return self.datasets / check_name(name, "dataset name")

    def model(self, name: str) -> Path:
        return self.models / check_name(name, "model name")

    def run(self, name: str) -> RunPaths:
        return RunPaths(self.runs / check_name(name, "run name"))

    def list_datasets(self) -> list[str]:
        return sorted(p.name for p in self.datasets.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))

    def list_models(self) -> list[str]:
        return sorted(p.name for p in self.models.iterdir() if not p.name.startswith("."))

    def list_runs(self) -> list[str]:
        return sorted(p.name for p in self.runs.iterdir() if p.is_dir() and not p.name.startswith("."))

    def summary(self) -> dict[str, object]:
        return {"root": str(self.root), "datasets": self.list_datasets(), "models": self.list_models(),
                "runs": self.list_runs()}


def choose_workspace(root: str | os.PathLike | None = None) -> Workspace:
    """Open (creating if needed) a workspace and remember it for every later notebook and command."""
    ws = Workspace.open(root)
    if root is not None:
        write_text_atomic(pointer_file(), str(ws.root) + "\n")
    return ws


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.workspace", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_init = sub.add_parser("init", help="create (or check) a workspace folder")
    p_init.add_argument("root", nargs="?", help="folder (default: TUNEBOOK_WORKSPACE or the platform default)")
    p_init.add_argument("--remember", action="store_true", help="make it the default for later notebooks")
    p_show = sub.add_parser("show", help="print what the workspace holds")
    p_show.add_argument("root", nargs="?")
    args = parser.parse_args(argv)
    ws = choose_workspace(args.root) if getattr(args, "remember", False) else Workspace.open(args.root)
    if args.cmd == "init":
        print(ws.root)
    else:
        for key, value in ws.summary().items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
