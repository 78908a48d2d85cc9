"""The machine we run on: platform, GPUs, drivers, packages, disk — and fixes for what is wrong.

``probe_environment()`` gathers facts through small probe functions (each replaceable in tests);
``check_environment(report)`` turns them into problems with a fix each; ``format_report`` prints them.
The command line also does the two setup jobs that need Python: registering the ``tunebook`` Jupyter
kernel, and installing the widget front end into the Jupyter server that is already running (usually
another Python environment than ours, as on Vast.ai and RunPod images).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from helpers.config import option

KEY_PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "bitsandbytes", "safetensors", "peft",
                "lycoris-lora", "huggingface-hub", "onnxruntime", "onnxruntime-gpu", "ipywidgets")
MIN_FREE_GB = 40  # an SDXL base + a few fp16 checkpoints + training state


@dataclass
class GPU:
    name: str
    vram_gb: float
    capability: str
    bf16: bool


@dataclass
class Problem:
    severity: str  # "error" | "warning"
    what: str
    fix: str


@dataclass
class EnvironmentReport:
    platform: str
    python: str
    gpus: list[GPU] = field(default_factory=list)
    driver: str | None = None
    cuda: str | None = None
    packages: dict[str, str | None] = field(default_factory=dict)
    workspace: str = ""
    free_disk_gb: float | None = None
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SetupConfig:
    """What 00_setup asks: where the workspace lives, and an optional Hugging Face token."""

    format_version: ClassVar[int] = 1
    workspace: str = option("", help="workspace folder; empty = the default (/workspace/tunebook on Vast/RunPod, "
                            "Google Drive on Colab, ./workspace elsewhere)", kind="path")
    hf_token: str = option("", help="Hugging Face token for gated/private repos and uploads; hidden, checked with "
                           "the Hub, stored only in HF's token file, never saved in a notebook or config",
                           label="HF token", kind="secret")
    price_per_hour: float = option(0.0, min=0.0, max=1000.0, unit="/h", help="what this machine costs per hour "
                                   "(the cost ledger turns paid time into money; 0 = not entered)")


# ---- probes (pure reads of the machine; tests replace them) -------------------------------------------
def detect_platform(env: dict[str, str] | None = None, exists=os.path.exists) -> str:
    """Vast.ai, RunPod, Colab or local — from the variables and paths each platform sets."""
    env = dict(os.environ) if env is None else env
    if "COLAB_RELEASE_TAG" in env or "COLAB_GPU" in env or exists("/content/sample_data"):
        return "colab"
    if any(k in env for k in ("RUNPOD_POD_ID", "RUNPOD_API_KEY", "RUNPOD_GPU_COUNT")):
        return "runpod"
    if any(k in env for k in ("VAST_CONTAINERLABEL", "CONTAINER_ID", "VAST_TCP_PORT_22")) or exists("/.launch"):
        return "vast"
    return "local"


def probe_gpus() -> tuple[list[GPU], str | None, str | None]:
    """GPUs through torch (name, VRAM, compute capability, bf16), the driver from nvidia-smi, torch's CUDA."""
    try:
        import torch
    except ImportError:
        return [], None, None
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(GPU(p.name, round(p.total_memory / 2**30, 1), f"{p.major}.{p.minor}", p.major >= 8))
    driver = None
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            driver = None
    return gpus, driver, torch.version.cuda


def probe_packages(names=KEY_PACKAGES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def probe_free_disk(path: str | os.PathLike) -> float | None:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return round(shutil.disk_usage(path).free / 2**30, 1)
    except OSError:
        return None


def _version_tuple(text: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", (text or "").split("+")[0])[:3])


# ---- checks ------------------------------------------------------------------------------------------
def check_environment(report: EnvironmentReport) -> list[Problem]:
    """Each known way this machine would waste the user's money, with the fix."""
    problems: list[Problem] = []
    pk = report.packages
    if not report.gpus:
        problems.append(Problem("warning", "no CUDA GPU visible to torch: training would run on the CPU",
                                "on a rented box, pick an image with CUDA torch (Vast/RunPod 'Kohya' or PyTorch "
                                "template) and check `nvidia-smi`; on Colab choose Runtime > Change runtime type > GPU"))
    for gpu in report.gpus:
        if gpu.vram_gb < 40:
            from helpers.templates import template_for_vram

            problems.append(Problem("warning", f"{gpu.name} has {gpu.vram_gb} GB: an SDXL full fine-tune needs "
                                    "~48 GB (A6000) with 8-bit AdamW",
                                    f"train an adapter: template {template_for_vram(gpu.vram_gb)} (notebook 04 picks "
                                    "it), or rent an A6000 48 GB / A100 80 GB for a full fine-tune"))
        if not gpu.bf16:
            problems.append(Problem("warning", f"{gpu.name} (compute {gpu.capability}) has no bf16",
                                    "use fp16 mixed precision and keep the SDXL VAE in fp32 (the default)"))
    bnb = pk.get("bitsandbytes")
    if bnb and _version_tuple(bnb) < (0, 42):
        problems.append(Problem("error", f"bitsandbytes {bnb} has a known 8-bit optimizer bug "
                                "(0.36-0.41 corrupt AdamW8bit/Lion8bit updates)",
                                "upgrade: .venv/bin/pip install -U 'bitsandbytes>=0.42' (setup.sh pins a good one)"))
    torch_v = pk.get("torch")
    if torch_v is None:
        problems.append(Problem("error", "torch is not installed", "run `bash setup.sh`"))
    elif _version_tuple(torch_v) < (2, 4):
        problems.append(Problem("error", f"torch {torch_v} is too old (need >= 2.4)",
                                "use an image with torch >= 2.4, or remove it and run `bash setup.sh`"))
    for name in ("diffusers", "transformers", "safetensors"):
        if pk.get(name) is None and name in pk:
            problems.append(Problem("error", f"{name} is not installed", "run `bash setup.sh`"))
    if report.gpus and pk.get("onnxruntime") and not pk.get("onnxruntime-gpu"):
        problems.append(Problem("warning", "onnxruntime is the CPU build: the WD tagger will tag on the CPU",
                                "for GPU tagging: .venv/bin/pip install onnxruntime-gpu matching CUDA " + (report.cuda or "")))
    if report.free_disk_gb is not None and report.free_disk_gb < MIN_FREE_GB:
        problems.append(Problem("warning", f"only {report.free_disk_gb} GB free on the workspace volume",
                                f"SDXL fine-tuning needs ~{MIN_FREE_GB} GB (base 7 GB, fp16 checkpoints 7 GB each, "
                                "training state ~20 GB): rent more disk or keep fewer checkpoints"))
    if report.platform == "colab" and not str(report.workspace).startswith("/content/drive"):
        problems.append(Problem("warning", "the workspace is on /content, which Colab wipes with the runtime",
                                "mount Google Drive first (from google.colab import drive; drive.mount('/content/drive'))"))
    return problems


def probe_environment(workspace: str | os.PathLike | None = None, gpus=None, packages=None) -> EnvironmentReport:
    """Gather everything; ``gpus``/``packages`` let tests pass fakes for the probes."""
    from helpers.workspace import default_root

    ws = str(workspace or default_root())
    gpu_list, driver, cuda = probe_gpus() if gpus is None else gpus
    report = EnvironmentReport(platform=detect_platform(), python=sys.version.split()[0], gpus=gpu_list,
                               driver=driver, cuda=cuda, packages=probe_packages() if packages is None else packages,
                               workspace=ws, free_disk_gb=probe_free_disk(ws))
    report.problems = check_environment(report)
    return report


def format_report(report: EnvironmentReport) -> str:
    gpu_lines = [f"  GPU {i}: {g.name}, {g.vram_gb} GB, compute {g.capability}, bf16 {'yes' if g.bf16 else 'no'}"
                 for i, g in enumerate(report.gpus)] or ["  GPU: none visible (CPU only)"]
    lines = [f"platform: {report.platform}   python {report.python}",
             *gpu_lines,
             f"  driver {report.driver or '-'}   CUDA (torch) {report.cuda or '-'}",
             "packages: " + ", ".join(f"{k} {v}" for k, v in report.packages.items() if v),
             f"workspace: {report.workspace}   free disk: {report.free_disk_gb} GB"]
    if report.problems:
        lines.append("problems:")
        lines += [f"  [{p.severity}] {p.what}\n      fix: {p.fix}" for p in report.problems]
    else:
        lines.append("no problems found")
    return "\n".join(lines)


def show_report(report: EnvironmentReport) -> None:
    """Display the report in a notebook: a facts table and the problems with their fixes."""
    import html

    from IPython.display import HTML, display

    rows = [("platform", report.platform), ("python", report.python)]
    rows += [(f"GPU {i}", f"{g.name} — {g.vram_gb} GB, compute {g.capability}, bf16 {'yes' if g.bf16 else 'no'}")
             for i, g in enumerate(report.gpus)] or [("GPU", "none visible (CPU only)")]
    rows += [("driver / CUDA", f"{report.driver or '-'} / {report.cuda or '-'}"),
             ("workspace", f"{report.workspace} ({report.free_disk_gb} GB free)")]
    rows += [(k, v) for k, v in report.packages.items() if v]
    table = "".join(f"<tr><td><b>{html.escape(str(k))}</b></td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    colour = {"error": "#c00", "warning": "#b60"}
    probs = "".join(f"<li><span style='color:{colour.get(p.severity, '#333')}'>[{p.severity}] {html.escape(p.what)}</span>"
                    f"<br>fix: {html.escape(p.fix)}</li>" for p in report.problems) or "<li>no problems found</li>"
    display(HTML(f"<table>{table}</table><h4>Problems and fixes</h4><ul>{probs}</ul>"))


# ---- setup jobs ----------------------------------------------------------------------------------------
def register_kernel(workspace: str | None = None, name: str = "tunebook",
                    display_name: str = "tunebook (.venv)", prefix: str | None = None) -> Path:
    """Install a kernelspec for this interpreter; the kernel gets the workspace and HF cache in its env."""
    from ipykernel.kernelspec import install

    env = {}
    if workspace:  # the workspace itself is remembered by helpers.workspace; the HF cache follows it
        env["HF_HOME"] = os.environ.get("HF_HOME", str(Path(workspace) / "cache" / "huggingface"))
    path = install(user=prefix is None, prefix=prefix, kernel_name=name, display_name=display_name, env=env)
    return Path(path)


def find_jupyter_server_python(own_prefix: str = sys.prefix) -> str | None:
    """The Python of the Jupyter server the user's browser talks to, if it is not ours.

    A running jupyter-lab/notebook/server process wins (its interpreter); else the first ``jupyter`` on PATH
    that does not belong to our venv.
    """
    candidates: list[str] = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(cmd).decode(errors="replace")
        if re.search(r"jupyter[-_ ](lab|notebook|server)|jupyterlab|notebook\.app|jupyter_server", text) \
                and "ipykernel" not in text:
            exe = cmd[0].decode(errors="replace")
            if "python" in Path(exe).name:
                candidates.append(exe)
            else:
                try:  # a `jupyter-lab` entry script: its shebang names the interpreter
                    first = Path(shutil.which(exe) or exe).read_text(errors="replace").splitlines()[0]
                    if first.startswith("#!"):
                        candidates.append(first[2:].strip().split()[0])
                except (OSError, IndexError):
                    pass
    jupyter = shutil.which("jupyter")
    if jupyter:
        try:
            first = Path(jupyter).read_text(errors="replace").splitlines()[0]
            if first.startswith("#!"):
                candidates.append(first[2:].strip().split()[0])
        except (OSError, IndexError):
            pass
    for exe in candidates:
        if exe and not str(Path(exe).resolve()).startswith(str(Path(own_prefix).resolve())) and Path(exe).exists():
            return exe
    return None


def fix_widgets(server_python: str | None, our_python: str = sys.executable) -> str:
    """Make ipywidgets render in the Jupyter server's environment: install the matching jupyterlab_widgets.

    Returns a one-line note for the user (what was done; whether to refresh the browser page).
    """
    if not server_python:
        return "no separate Jupyter server found: open JupyterLab from this venv (.venv/bin/jupyter lab) or the platform's Jupyter"
    want = subprocess.run([our_python, "-c", "import importlib.metadata as m; print(m.version('jupyterlab_widgets'))"],
                          capture_output=True, text=True).stdout.strip()
    have = subprocess.run([server_python, "-c", "import importlib.metadata as m; print(m.version('jupyterlab_widgets'))"],
                          capture_output=True, text=True).stdout.strip()
    if want and have == want:
        return f"widgets: the Jupyter server ({server_python}) already has jupyterlab_widgets {have}"
    res = subprocess.run([server_python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          f"jupyterlab_widgets=={want}"], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"installing jupyterlab_widgets=={want} into {server_python} failed: "
                           f"{res.stderr.strip()[-400:]}")
    return (f"widgets: installed jupyterlab_widgets {want} into the Jupyter server's environment ({server_python}); "
            "REFRESH the Jupyter page in your browser so the widgets render")


def setup_summary(workspace: str) -> str:
    report = probe_environment(workspace)
    gpu = "; ".join(f"{g.name} {g.vram_gb} GB" for g in report.gpus) or "none (CPU only)"
    import torch

    lines = [f"GPU(s): {gpu}",
             f"torch {torch.__version__} (CUDA {torch.version.cuda or '-'})   python {report.python}",
             f"venv: {sys.prefix}",
             f"workspace: {workspace} (free {report.free_disk_gb} GB); HF cache: {os.environ.get('HF_HOME', '-')}",
             "kernel: 'tunebook' (pick it in Jupyter: Kernel > Change kernel)"]
    for p in report.problems:
        lines.append(f"[{p.severity}] {p.what} -> {p.fix}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.environment", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_rep = sub.add_parser("report", help="print the environment report")
    p_rep.add_argument("--json", action="store_true")
    p_rep.add_argument("--workspace")
    p_k = sub.add_parser("register-kernel", help="register the 'tunebook' Jupyter kernel for this venv")
    p_k.add_argument("--workspace")
    p_w = sub.add_parser("fix-widgets", help="install jupyterlab_widgets where the running Jupyter server lives")
    p_w.add_argument("--venv", default=sys.prefix)
    p_s = sub.add_parser("summary", help="the end-of-setup summary")
    p_s.add_argument("--workspace", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "report":
        report = probe_environment(args.workspace)
        print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    elif args.cmd == "register-kernel":
        print(register_kernel(args.workspace))
    elif args.cmd == "fix-widgets":
        print(fix_widgets(find_jupyter_server_python(args.venv)))
    else:
        print(setup_summary(args.workspace))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
