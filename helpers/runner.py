"""Training as a detached job: start, watch, stop, resume — never inside the notebook kernel.

``start_job`` writes the run's ``config.toml`` and launches ``python -m helpers.training RUN/config.toml`` (or
``accelerate launch`` for several GPUs) in its own session, with stdout/stderr in ``RUN/stdout.log`` and the
process id in ``RUN/job.json``. A closed browser tab or a restarted kernel loses nothing: ``job_status`` reads
the status the trainer writes and checks whether the process still lives. Every file name comes from
``helpers.workspace.RunPaths``; the log is read with ``helpers.training.progress``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.changes import write_text_atomic
from helpers.config import save_config
from helpers.workspace import RunPaths, Workspace

REPO = Path(__file__).resolve().parent.parent


@dataclass
class JobStatus:
    """What a monitor shows: the trainer's own status plus whether its process is alive."""

    state: str  # not started | starting | caching | training | finished | failed | stopped | died
    alive: bool
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    loss: float | None = None
    lr: float | None = None
    images_per_s: float | None = None
    eta_s: float | None = None
    peak_memory_gb: float | None = None
    last_checkpoint: str | None = None
    last_state_at: float | None = None  # when the newest resumable state was written (the last safe point)
    last_state_step: int | None = None
    error: str | None = None
    pid: int | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. a resume with edited learning rates

    @property
    def done(self) -> bool:
        return not self.alive and self.state not in ("not started",)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this kernel counts as gone
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def training_command(config_path: Path, num_gpus: int = 1, resume: str | None = None,
                     workspace: Path | None = None, python: str = sys.executable,
                     stop_instance_when_done: bool = False) -> list[str]:
    """The command line that trains one run (``accelerate launch`` when more than one GPU is used)."""
    args = ["-m", "helpers.training", str(config_path)]
    if workspace is not None:
        args += ["--workspace", str(workspace)]
    if resume:
        args += ["--resume", resume]
    if stop_instance_when_done:
        args += ["--stop-instance-when-done"]
    from helpers.training.launch import launch_command

    return launch_command(config_path, num_gpus, trainer_args=args[3:], python=python)


def start_job(run: RunPaths, config: Any = None, *, num_gpus: int = 1, resume: str | None = None,
              env: dict[str, str] | None = None, stop_instance_when_done: bool = False) -> JobStatus:
    """Launch the run detached. ``config`` (a TrainConfig) is saved first; None reuses the saved one.
    ``stop_instance_when_done`` stops this rented machine when training finishes (``helpers.instance``; off).

    Refuses to start a second process on a run whose process is still alive.
    """
    current = job_status(run)
    if current.alive:
        raise RuntimeError(f"run '{run.name}' is already running (pid {current.pid}): stop it first or watch it")
    run.create()
    if config is not None:
        if run.config.exists() and resume is None and run_outputs(run)["states"]:
            raise FileExistsError(f"run '{run.name}' already has training state: resume it "
                                  f"(resume='latest') or pick a new run name")
        save_config(config, run.config)
    elif not run.config.exists():
        raise FileNotFoundError(f"run '{run.name}' has no config.toml: pass a config")
    cmd = training_command(run.config, num_gpus=num_gpus, resume=resume, workspace=run.root.parent.parent,
                           stop_instance_when_done=stop_instance_when_done)
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), child_env.get("PYTHONPATH")]))
    write_text_atomic(run.status, json.dumps({"state": "starting", "step": 0}))
    with open(run.stdout, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                env=child_env, start_new_session=True)  # own session: survives the kernel
    write_text_atomic(run.job, json.dumps({"pid": proc.pid, "command": cmd, "started": time.time(),
                                           "resume": resume}, indent=1))
    return job_status(run)


def job_status(run: RunPaths) -> JobStatus:
    job = read_json(run.job)
    pid = job.get("pid")
    alive = _pid_alive(pid)
    status = read_json(run.status)
    if not job and not status:
        return JobStatus("not started", False)
    state = status.get("state", "starting")
    if not alive and state in ("starting", "loading", "caching", "training"):
        state = "stopped" if job.get("stopped") else "died"
    fields = {k: status.get(k) for k in ("loss", "lr", "images_per_s", "eta_s", "peak_memory_gb",
                                          "last_checkpoint", "last_state_at", "last_state_step", "error")}
    if fields["last_state_at"] is None and status.get("last_state"):  # resumed, no save since: the state's own time
        saved = read_json(Path(status["last_state"]) / "trainer.json")
        fields["last_state_at"], fields["last_state_step"] = saved.get("saved_at"), saved.get("step")
    if state == "died" and not fields["error"]:
        fields["error"] = "the training process ended without a word: see " + str(run.stdout) + \
                          " (out of memory kills are the usual cause); resume it to continue from the last state"
    return JobStatus(state=state, alive=alive, step=int(status.get("step") or 0),
                     total_steps=int(status.get("total_steps") or 0), epoch=int(status.get("epoch") or 0),
                     pid=pid, warnings=list(status.get("warnings") or []), **fields)


def stop_job(run: RunPaths, timeout: float = 180.0) -> JobStatus:
    """Ask the trainer to stop: SIGTERM to its process, which finishes the step it is on, saves resumable state
    and exits 0 (``helpers.training.interrupt``); its process group is killed if it has not ended within
    ``timeout`` s (an SDXL state takes ~20-60 s to write on a local disk)."""
    job = read_json(run.job)
    pid = job.get("pid")
    if not _pid_alive(pid):
        return job_status(run)
    job["stopped"] = time.time()
    write_text_atomic(run.job, json.dumps(job, indent=1))
    try:
        os.kill(pid, signal.SIGTERM)  # the trainer alone: its loader workers end when it does
    except ProcessLookupError:
        return job_status(run)
    deadline = time.time() + timeout
    while time.time() < deadline and _pid_alive(pid):
        time.sleep(0.2)
    if _pid_alive(pid):
        kill_tree(pid)
    _reap(pid)
    return job_status(run)


def kill_tree(pid: int) -> None:
    """SIGKILL a job: its process group and every process below it, found before the kill. Several-GPU
    launchers (accelerate / torch elastic) start their workers in sessions of their own, which the group misses."""
    import psutil

    try:
        below = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        below = []
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in below:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def _reap(pid: int | None) -> None:
    if not pid:
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_job(run: RunPaths, timeout: float | None = None, poll: float = 0.5) -> JobStatus:
    """Block until the run's process ends (or ``timeout`` seconds pass); returns the final status."""
    t0 = time.time()
    while True:
        _reap(read_json(run.job).get("pid"))
        status = job_status(run)
        if not status.alive or (timeout is not None and time.time() - t0 > timeout):
            return status
        time.sleep(poll)


def suggest_template(vram_gb: float | None) -> str:
    """The shipped template that fits the GPU: A100 80 GB, A6000 48 GB, an adapter template under 40 GB
    (``templates.template_for_vram``), the tiny demo without a GPU."""
    from helpers.templates import template_for_vram

    return template_for_vram(vram_gb)


def gpu_count() -> int:
    """CUDA GPUs on this machine (1 without any: the trainer then runs on the CPU): notebook 04's default."""
    import torch

    return max(1, torch.cuda.device_count())


def suggest_train_config(ws: Workspace, template: str | None = None) -> Any:
    """A TrainConfig for this machine and workspace: the fitting template, the newest dataset and base model."""
    from helpers.config import build_config
    from helpers.training.config import TrainConfig

    if template is None:
        import torch

        vram = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None
        template = suggest_template(vram)
    cfg = build_config(TrainConfig, template)
    overrides: dict[str, Any] = {}
    datasets, models = ws.list_datasets(), ws.list_models()
    if not cfg.data.dataset and datasets:  # a template that names no dataset gets the workspace's first
        overrides["data"] = {"dataset": datasets[0]}
    if not cfg.model.base_model and models:
        overrides["model"] = {"base_model": ([m for m in models if m.endswith(".safetensors")] or models)[0]}
    return build_config(TrainConfig, template, overrides=overrides) if overrides else cfg


def new_run_name(ws: Workspace, prefix: str = "run") -> str:
    """``prefix-YYYYmmdd-HHMM`` (plus a counter when taken): a fresh run folder name."""
    stamp = time.strftime("%Y%m%d-%H%M")
    name, n = f"{prefix}-{stamp}", 2
    while (ws.runs / name).exists():
        name, n = f"{prefix}-{stamp}-{n}", n + 1
    return name


def latest_run(ws: Workspace) -> RunPaths | None:
    """The most recently started run (after a kernel restart: pick up where the notebook left off)."""
    runs = [ws.run(n) for n in ws.list_runs()]
    runs = [r for r in runs if r.config.exists()]
    return max(runs, key=lambda r: (r.job if r.job.exists() else r.config).stat().st_mtime) if runs else None


def run_outputs(run: RunPaths) -> dict[str, list[str]]:
    """What a run has written so far: model checkpoints and resumable states."""
    return {"checkpoints": sorted(str(p) for p in run.checkpoints.glob("*.safetensors")),
            "states": [str(p) for p in run.states()]}
