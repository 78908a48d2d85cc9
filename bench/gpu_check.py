"""The GPU check behind ``bench/gpu_check.sh``: every figure tunebook only estimates, measured in one go.

On a CUDA machine with no internet, in under 8 minutes (``--budget``, default 470 s): the real-size SDXL (random
weights from the shipped configs) training step with the A6000 template's settings and with the A100 template's
(EMA on the GPU), a LoRA step (``bench/train_step.py --mode lora``, the adapter mode), SD 1.5 at 512², a
training state's write time, the upscaler, a real-size WD-tagger-shaped ViT on onnxruntime-gpu, LoRA extraction
of a real-size SDXL pair on the GPU, and the generation bench when present. Each measurement runs in its own
process with its own time budget, so one that fails, hangs or runs out of memory costs only itself; progress
is printed as it goes, and the JSON (``bench/results/gpu_check-<gpu>-<time>.json``) is rewritten after every
section, so even a killed check leaves what it measured. Training figures are compared with the pre-flight's
estimate for the same settings (``vs_estimate``: measured / estimated) and, unless ``--no-calibrate``, added
to ``helpers/training/speeds.toml`` so later pre-flights quote them as measured.

``--dry-run`` runs every section's CPU smoke version (tiny models, a step or two): it proves the script starts,
each command line is right and the JSON is written, on a machine without a GPU (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TRAIN = ["bench/train_step.py", "--steps", "5", "--warmup", "2"]
TRAIN_DRY = ["--device", "cpu", "--resolutions", "64", "--steps", "1", "--warmup", "0"]


@dataclass(frozen=True)
class Section:
    name: str
    budget_s: int
    what: str


SECTIONS = [
    Section("environment", 40, "GPU, driver, torch, onnxruntime providers, disk"),
    Section("sdxl_full_a6000", 100, "SDXL full fine-tune step, 1024², sdxl_finetune_a6000 settings"),
    Section("sdxl_full_a100_ema", 100, "SDXL full fine-tune step, 1024², sdxl_finetune_a100 settings (EMA)"),
    Section("sd15_512", 60, "SD 1.5 full fine-tune step, 512²"),
    Section("sdxl_lora", 70, "SDXL LoRA rank 32 step, 1024², sdxl_lora_24gb settings (train_step.py --mode lora)"),
    Section("state_save", 45, "training state write time, and the state cadence it implies"),
    Section("upscale", 40, "real-size 4x RRDBNet upscaler"),
    Section("tagger", 80, "WD-tagger-shaped ViT-L/16 at 448² on onnxruntime-gpu"),
    Section("lora_extract", 150, "LoRA extraction (rank 128) of a real-size SDXL pair on the GPU"),
    Section("generation", 70, "SDXL generation 1024² (bench/generation.py, when present)"),
]


def command(name: str, dry: bool, calibrate: bool, scratch: Path) -> list[str] | None:
    """The command a section runs (None: this checkout has no such bench)."""
    py = sys.executable
    cal = ["--calibrate"] if calibrate and not dry else []
    train = {"sdxl_full_a6000": ["--template", "sdxl_finetune_a6000", "--resolutions", "1024"],
             "sdxl_full_a100_ema": ["--template", "sdxl_finetune_a100", "--resolutions", "1024"],
             "sd15_512": ["--arch", "sd15", "--resolutions", "512", "--optimizer", "AdamW8bit", "--mixed-precision",
                          "bf16", "--train-text-encoder"],
             "sdxl_lora": ["--template", "sdxl_lora_24gb", "--resolutions", "1024"]}  # its [network]: lora r32
    if name in train:
        return [py, *TRAIN, *train[name], *(TRAIN_DRY if dry else cal)]
    if name in ("environment", "tagger"):
        return [py, __file__, "--section", name, *(["--dry-run"] if dry else [])]
    if name == "state_save":
        return [py, "bench/state_save.py", "--gb", "0.05" if dry else "4", "--folder", str(scratch)]
    if name == "upscale":
        return [py, "bench/upscale.py", *(["--size", "64", "--repeats", "1"] if dry else ["--repeats", "2"])]
    if name == "lora_extract":
        return [py, "bench/lora_extract.py", "--dir", str(scratch / "lora-pair"), *(["--size", "tiny"] if dry else [])]
    if name == "generation":
        if not (ROOT / "bench" / "generation.py").exists():
            return None
        return [py, "bench/generation.py", "--skip-training", *(["--images", "1", "--steps", "2"] if dry
                                                                  else ["--images", "2"])]
    raise ValueError(name)


# ---------------------------------------------------------------- running one section


def parse_json(text: str) -> dict | None:
    """The JSON object a bench printed (the last one; progress lines before it are skipped)."""
    starts = [m.start() for m in re.finditer(r"^\{", text, flags=re.M)]
    for start in reversed(starts):
        try:
            return json.loads(text[start:])
        except ValueError:
            continue
    return None


def run_section(cmd: list[str], budget_s: float, env: dict) -> dict:
    """Run one command in its own process group with a deadline; heartbeat lines while it runs."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
        status, beat = None, 15
        while status is None:
            try:
                proc.wait(timeout=min(beat, max(0.1, budget_s - (time.monotonic() - t0))))
                status = "ok" if proc.returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                if time.monotonic() - t0 >= budget_s:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    status = "timeout"
                else:
                    print(f"      ... {time.monotonic() - t0:.0f} s", flush=True)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    record = {"status": status, "seconds": round(time.monotonic() - t0, 1), "command": cmd[1:]}
    result = parse_json(stdout)
    if result is not None:
        record["result"] = result
    if status != "ok":
        tail = (stderr or stdout).strip().splitlines()[-12:]
        record["error"] = ("out of memory: " if "out of memory" in stderr.lower() else "") + "\n".join(tail)
        if status == "timeout":
            record["error"] = f"did not finish within {budget_s:.0f} s\n" + record["error"]
    elif result is None:
        record.update(status="failed", error="printed no JSON: " + stdout[-500:])
    return record


def compare(name: str, record: dict) -> dict:
    """Measured vs the pre-flight's estimate, where the pre-flight estimates the figure."""
    result = record.get("result") or {}
    if name.startswith(("sdxl_", "sd15")) and result.get("runs"):
        run = result["runs"][0]
        if "estimate" not in run:
            return {"note": "CPU smoke run: nothing to compare"}
        return {"images_per_s": run["images_per_s"], "estimated_images_per_s": run["estimate"]["images_per_s"],
                "peak_memory_gb": run["peak_memory_gb"], "estimated_vram_gb": run["estimate"]["vram_gb"],
                "mfu": run.get("mfu"), "vs_estimate": run.get("vs_estimate")}
    if name == "state_save" and result.get("templates"):
        return {template: {"state_gb": row["state_gb"], "save_s": row["save_s"],
                           "template_cadence": row.get("at_template_cadence"),
                           "young_interval_min_mtbf_2h": row["mtbf_2h"]["interval_min"]}
                for template, row in result["templates"].items()}
    return {"note": "the pre-flight estimates nothing here; this is the reference figure"}


def headline(name: str, record: dict) -> str:
    """One line a person reads while the check goes on."""
    if record["status"] != "ok":
        return f"{record['status']}: {record.get('error', '').strip().splitlines()[-1] if record.get('error') else ''}"
    cmp = record.get("comparison", {})
    if "images_per_s" in cmp and cmp.get("estimated_images_per_s"):
        return (f"{cmp['images_per_s']:.2f} img/s (estimate {cmp['estimated_images_per_s']:.2f}), peak "
                f"{cmp['peak_memory_gb']:.1f} GB (estimate {cmp['estimated_vram_gb']:.1f}), MFU {cmp['mfu']}")
    result = record.get("result", {})
    for key in ("gb_per_s", "images_per_s", "tag_dataset_images_per_s"):
        if key in result:
            return f"{key} {result[key]}"
    return "ok"


# ---------------------------------------------------------------- the internal sections


def section_environment(dry: bool) -> dict:
    import platform

    import torch

    from helpers.environment import probe_packages

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cpus": os.cpu_count(), "disk_free_gb": round(shutil.disk_usage(ROOT).free / 1e9, 1),
           "packages": probe_packages()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": props.name, "vram_gib": round(props.total_memory / 2**30, 1),
                      "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count()}
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        out["nvidia_smi"] = smi.stdout.strip()
    try:
        import onnxruntime as ort

        out["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        out["onnxruntime_providers"] = None
    if not dry and "gpu" not in out:
        raise SystemExit("no CUDA GPU visible to torch: run with --dry-run for the CPU smoke check")
    return out


def vit_tagger(dim: int, depth: int, heads: int, size: int, patch: int, tags: int):
    """A WD-tagger-shaped ViT (the v3 taggers' interface: NHWC BGR 0-255 in, sigmoid per tag out), random."""
    import torch

    class ViT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Conv2d(3, dim, patch, patch)
            self.pos = torch.nn.Parameter(torch.randn(1, (size // patch) ** 2, dim) * 0.02)
            layer = torch.nn.TransformerEncoderLayer(dim, heads, 4 * dim, batch_first=True, norm_first=True,
                                                     activation="gelu")
            self.blocks = torch.nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.norm, self.head = torch.nn.LayerNorm(dim), torch.nn.Linear(dim, tags)

        def forward(self, x):
            x = self.embed(x.permute(0, 3, 1, 2) / 255.0).flatten(2).transpose(1, 2) + self.pos
            return torch.sigmoid(self.head(self.norm(self.blocks(x)).mean(1)))

    return ViT().eval()


def section_tagger(dry: bool) -> dict:
    """wd-vit-large-tagger-v3's shape (ViT-L/16 at 448², 10,861 tags) exported to ONNX, then the library's own
    ``tag_dataset`` over JPEGs of photo size, on onnxruntime's CUDA provider."""
    import numpy as np
    import torch
    from PIL import Image

    from helpers.captioning.wd_tagger import MODEL_FILE, TAGS_FILE, TaggerConfig, load_tagger, tag_dataset

    dim, depth, heads, size, tags, count = (64, 2, 2, 64, 20, 4) if dry else (1024, 24, 16, 448, 10861, 96)
    with tempfile.TemporaryDirectory() as tmp:
        folder, data = Path(tmp) / "tagger", Path(tmp) / "images"
        folder.mkdir()
        data.mkdir()
        t0 = time.perf_counter()
        torch.onnx.export(vit_tagger(dim, depth, heads, size, 16, tags), torch.zeros(1, size, size, 3),
                          str(folder / MODEL_FILE), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17,
                          dynamo=False)
        exported = time.perf_counter() - t0
        rows = ["tag_id,name,category,count"] + [f"{i},{n},9,1" for i, n in enumerate(
            ("general", "sensitive", "questionable", "explicit"))] + [f"{i + 4},tag_{i},0,1" for i in range(tags - 4)]
        (folder / TAGS_FILE).write_text("\n".join(rows) + "\n", encoding="utf-8")
        rng = np.random.default_rng(0)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8)).save(data / f"{i}.jpg", quality=90)
        tagger = load_tagger(folder, device="cpu" if dry else "cuda")
        report = tag_dataset(data, TaggerConfig(model=str(folder), batch_size=16), Path(tmp), progress=False,
                             tagger=tagger)
    return {"model": f"ViT dim {dim}, depth {depth}, {size}², {tags} tags (random weights)",
            "export_s": round(exported, 1), "providers": tagger.providers, "images": count,
            "images_per_s": round(report.images_per_second, 2)}


# ---------------------------------------------------------------- the check


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def gpu_slug() -> str:
    try:
        import torch

        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except ImportError:
        name = "unknown"
    return re.sub(r"[^A-Za-z0-9]+", "-", name.replace("NVIDIA", "")).strip("-").lower() or "gpu"


def run_check(args) -> int:
    """Every section in turn within the total budget; the JSON rewritten after each; 0 when the file is written."""
    started = time.monotonic()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"gpu_check-{'dry-run' if args.dry_run else gpu_slug()}-{stamp}.json"
    wanted = [s for s in SECTIONS if not args.only or s.name in args.only.split(",")]
    report = {"tool": "bench/gpu_check.sh", "dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "budget_s": args.budget, "sections": {}}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"GPU check{' (dry run: CPU smoke versions)' if args.dry_run else ''}: {len(wanted)} sections, "
          f"{args.budget:.0f} s at most; results in {path}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=out_dir) as scratch:
        for index, section in enumerate(wanted, 1):
            left = args.budget - (time.monotonic() - started)
            cmd = command(section.name, args.dry_run, not args.no_calibrate, Path(scratch))
            print(f"[{index}/{len(wanted)}] {section.name}: {section.what}", flush=True)
            if cmd is None:
                record = {"status": "skipped", "seconds": 0, "error": "no such bench in this checkout"}
            elif left < 10:
                record = {"status": "skipped", "seconds": 0, "error": "the check's time budget ran out"}
            else:
                record = run_section(cmd, min(section.budget_s, left - 5), env)
                if record["status"] == "ok":
                    record["comparison"] = compare(section.name, record)
            report["sections"][section.name] = record
            print(f"    {headline(section.name, record)} ({record['seconds']} s)", flush=True)
            report["seconds"] = round(time.monotonic() - started, 1)
            write_json(path, report)
    gpu = report["sections"].get("environment", {}).get("result", {}).get("gpu")
    report.update(gpu=gpu, finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                  counts={s: sum(r["status"] == s for r in report["sections"].values())
                          for s in ("ok", "failed", "timeout", "skipped")})
    write_json(path, report)
    print(f"done in {report['seconds']:.0f} s: {report['counts']}; {path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU smoke versions of every section")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for the JSON file")
    parser.add_argument("--budget", type=float, default=470, help="seconds for the whole check (default 470)")
    parser.add_argument("--only", help="comma list of sections to run (default: all)")
    parser.add_argument("--no-calibrate", action="store_true", help="do not add the training figures to "
                        "helpers/training/speeds.toml")
    parser.add_argument("--section", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section:
        result = {"environment": section_environment, "tagger": section_tagger}[args.section](args.dry_run)
        print(json.dumps(result, indent=1))
        return 0
    return run_check(args)


if __name__ == "__main__":
    raise SystemExit(main())
