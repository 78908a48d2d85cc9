"""Stop the rented machine when the work is done — off unless you ask, with the provider's own command line.

Vast.ai: ``vastai stop instance <id>`` (the id from ``CONTAINER_ID``, or ``VAST_CONTAINERLABEL`` = ``C.<id>``; the
key from ``vastai set api-key``'s file, ``VAST_API_KEY``, or the instance-scoped ``CONTAINER_API_KEY`` Vast puts
in every container). RunPod: ``runpodctl stop pod <RUNPOD_POD_ID>`` (its key from ``runpodctl config`` or
``RUNPOD_API_KEY``, which pods have). Stopping pauses the GPU's billing; the disk still bills until the instance
is destroyed (so the results must be off the machine first: ``helpers.results``). A key is passed to the command
through its environment or its own config, never printed: the command line shown names it ``***``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StopPlan:
    provider: str  # "vast" | "runpod" | ""
    command: list[str]  # what runs (a key in it, when one must be passed, is shown as ***)
    env: dict[str, str]
    problem: str = ""  # why it cannot stop this machine (then nothing runs)

    @property
    def shown(self) -> str:
        secret = [v for k, v in self.env.items() if k.endswith("API_KEY") and v]
        return " ".join("***" if part in secret else part for part in self.command)


def _vast_key(env: dict[str, str]) -> str | None:
    for var in ("VAST_API_KEY", "CONTAINER_API_KEY"):
        if env.get(var):
            return env[var]
    return None


def _vast_configured(env: dict[str, str]) -> bool:
    home = Path(env.get("HOME") or Path.home())
    files = [home / ".config" / "vastai" / "vast_api_key", home / ".vast_api_key"]
    return any(f.is_file() for f in files) or _vast_key(env) is not None


def _runpod_configured(env: dict[str, str]) -> bool:
    home = Path(env.get("HOME") or Path.home())
    return bool(env.get("RUNPOD_API_KEY")) or any(f.is_file() for f in (home / ".runpod" / "config.toml",
                                                                           home / ".runpod.yaml"))


def plan_stop(env: dict[str, str] | None = None) -> StopPlan:
    """How this machine would be stopped, or why it cannot be (no provider found, CLI missing, not configured)."""
    env = dict(os.environ) if env is None else env
    vast_id = env.get("CONTAINER_ID") or (env.get("VAST_CONTAINERLABEL") or "").removeprefix("C.")
    if vast_id:
        if not shutil.which("vastai", path=env.get("PATH")):
            return StopPlan("vast", [], {}, "this is a Vast.ai instance, but the `vastai` command is not installed "
                            "(pip install vastai)")
        if not _vast_configured(env):
            return StopPlan("vast", [], {}, "`vastai` has no API key here: run `vastai set api-key KEY` once")
        key = _vast_key(env)
        command = ["vastai", "stop", "instance", vast_id] + (["--api-key", key] if key else [])
        return StopPlan("vast", command, {"VAST_API_KEY": key} if key else {})
    if env.get("RUNPOD_POD_ID"):
        if not shutil.which("runpodctl", path=env.get("PATH")):
            return StopPlan("runpod", [], {}, "this is a RunPod pod, but `runpodctl` is not installed")
        if not _runpod_configured(env):
            return StopPlan("runpod", [], {}, "`runpodctl` has no API key here: run `runpodctl config --apiKey KEY`")
        return StopPlan("runpod", ["runpodctl", "stop", "pod", env["RUNPOD_POD_ID"]], {})
    return StopPlan("", [], {}, "not a Vast.ai or RunPod machine (no CONTAINER_ID / RUNPOD_POD_ID): stop it yourself")


def stop_instance(reason: str, env: dict[str, str] | None = None, echo=print) -> bool:
    """Stop this machine now (after ``reason``: "training finished", ...); True when the provider accepted."""
    env = dict(os.environ) if env is None else env
    plan = plan_stop(env)
    if plan.problem:
        echo(f"not stopping the machine after {reason}: {plan.problem}")
        return False
    echo(f"{reason}: stopping this machine ({plan.shown})")
    try:
        out = subprocess.run(plan.command, env={**env, **plan.env}, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        echo(f"could not stop the machine: {type(exc).__name__}: {exc}")
        return False
    text = (out.stdout + out.stderr).strip()
    for value in plan.env.values():
        text = text.replace(value, "***")
    if out.returncode != 0:
        echo(f"the provider refused to stop the machine (exit {out.returncode}): {text[-500:]}")
        return False
    echo(text or "stop requested")
    return True
