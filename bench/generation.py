"""Generation speed and memory: images/s and peak memory, with and without a LoRA (fused / unfused). Prints JSON.

CPU (always): the tiny SDXL at its native 256², 25 steps — a regression number for CI, not a speed claim.
CUDA (when present): the real SDXL architecture (shipped configs, random weights: the real FLOPs and memory) at
1024², 25 steps, CFG 7: images/s and peak VRAM without a LoRA, with a rank-32 LoRA on every attention/MLP layer
of the U-Net and text encoders fused into the weights, and unfused (forward hooks). Goal: fused costs < 5 %.
Both also report the peak memory of training steps with and without a round of samples in between (the real
training loop on the tiny model, sampling every step vs never), which must not hold training memory twice.

    python bench/generation.py                    # auto: CPU figures, plus CUDA figures if a GPU is present
    python bench/generation.py --skip-training    # generation only
    python bench/generation.py --cuda-model tiny  # the CUDA code path on the tiny model (a quick check)

Every number comes from the library's own code: ``ImageGenerator``, ``AppliedLoras``, ``training.loop.train``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


class PeakMemory:
    """Peak memory over a block: CUDA allocator peak, or the process's resident memory sampled every 5 ms."""

    def __init__(self, device: torch.device):
        self.device, self.peak_gb = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            proc, self._stop = psutil.Process(), threading.Event()

            def sample():
                while not self._stop.is_set():
                    self.peak_gb = max(self.peak_gb, proc.memory_info().rss / 1e9)
                    time.sleep(0.005)
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_gb = torch.cuda.max_memory_allocated() / 1e9
        else:
            self._stop.set()
            self._thread.join()
        return False


def synthetic_lora(bundle, path: Path, rank: int = 32) -> Path:
    """A kohya-named rank-``rank`` LoRA on every layer sd-scripts' networks.lora targets (no convs)."""
    from safetensors.torch import save_file

    from helpers.generation.loras import ModelWeights
    from helpers.lora import naming

    models = {"unet": bundle.unet, "te1": bundle.text_encoders[0], "te2": bundle.text_encoders[1]}
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for t in naming.list_targets(ModelWeights("sdxl", "bench", models), with_conv=False):
        out_dim, in_dim = t.matrix_shape
        tensors[f"{t.lora_name}.lora_down.weight"] = (torch.randn(rank, in_dim, generator=g) * 0.01).half()
        tensors[f"{t.lora_name}.lora_up.weight"] = (torch.randn(out_dim, rank, generator=g) * 0.01).half()
        tensors[f"{t.lora_name}.alpha"] = torch.tensor(float(rank)).half()
    save_file(tensors, str(path), metadata={"ss_base_model_version": "sdxl_base_v1-0", "ss_network_dim": str(rank)})
    return path


def timed_image(generator, settings, device: torch.device) -> tuple[float, float]:
    """(seconds, peak memory GB) of one image."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with PeakMemory(device) as peak:
        sync()
        t0 = time.perf_counter()
        generator.generate(settings)
        sync()
        seconds = time.perf_counter() - t0
    return seconds, peak.peak_gb


def bench_generation(bundle, device: torch.device, *, size: int, steps: int, images: int, rank: int) -> dict:
    """No LoRA / fused / unfused on the same models, interleaved image by image so drift hits every case alike
    (the LoRA is removed exactly between cases); medians reported."""
    from helpers.generation.loras import LoraSpec
    from helpers.generation.pipeline import ImageGenerator, ImageSettings

    generator = ImageGenerator(bundle, device=device, model_name="bench")
    settings = ImageSettings(prompt="a photo of a cat sitting on a red chair, detailed", steps=steps, cfg=7.0,
                             sampler="Euler a", seed=1, width=size, height=size)
    lora = synthetic_lora(bundle, Path(tempfile.mkdtemp(prefix="bench-lora-")) / "bench.safetensors", rank)
    cases = {"no_lora": None, "lora_fused": True, "lora_unfused": False}
    out = {"size": size, "steps": steps, "sampler": settings.sampler, "lora_rank": rank, "images_per_case": images,
           "weights_gb": round(sum(p.numel() * p.element_size() for m in [bundle.unet, bundle.vae,
                                   *bundle.text_encoders] for p in m.parameters()) / 1e9, 3)}
    times: dict[str, list[float]] = {c: [] for c in cases}
    peaks = dict.fromkeys(cases, 0.0)
    for i in range(images + 1):  # round 0 warms every case up
        for case, fused in cases.items():
            t0 = time.perf_counter()
            generator.apply_loras([] if fused is None else [LoraSpec(lora, 1.0)], fused=bool(fused))
            if i == 0 and fused is not None:
                out[case] = {"apply_s": round(time.perf_counter() - t0, 2), "layers": len(generator.loras.layers)}
            seconds, peak = timed_image(generator, replace(settings, seed=settings.seed + i), device)
            if i:
                times[case].append(seconds)
                peaks[case] = max(peaks[case], peak)
    generator.close()
    for case in cases:
        median = sorted(times[case])[len(times[case]) // 2]
        out[case] = {**out.pop(case, {}), "s_per_image": round(median, 3), "images_per_s": round(1 / median, 4),
                     "peak_memory_gb": round(peaks[case], 3)}  # popped first: the cases print in order
        if case != "no_lora":
            out[case]["speed_cost_pct"] = round(100 * (1 - out[case]["images_per_s"] / out["no_lora"]["images_per_s"]),
                                                1)
    return out


def estimate_check(bundle, result: dict, dtype: torch.dtype, vae_dtype: torch.dtype) -> dict:
    """The loader's working-memory estimate next to what was measured (peak minus weights)."""
    from helpers.generation.sources import working_memory_gb

    size = result["size"]
    est = working_memory_gb(bundle.unet.config.block_out_channels[0], bundle.vae.config.block_out_channels[0],
                            size, size, 1, dtype, vae_dtype)
    return {"estimated_working_gb": round(est, 2),
            "measured_working_gb": round(result["no_lora"]["peak_memory_gb"] - result["weights_gb"], 2)}


def build_cuda_model(kind: str, device: torch.device):
    """Real-size SDXL with random weights (bf16; VAE bf16 as the loader picks on bf16 GPUs), or the tiny one."""
    from train_step import build_real_sdxl, build_tiny_sdxl

    bundle = build_real_sdxl(device) if kind == "real" else build_tiny_sdxl()
    with torch.no_grad():
        for model in [bundle.unet, bundle.vae, *bundle.text_encoders]:
            for p in model.parameters():
                if p.dim() >= 2:  # keep random activations finite at 70 transformer blocks deep
                    p.normal_(0, 0.02)
            model.to(device, torch.bfloat16).eval().requires_grad_(False)
    return bundle


def bench_training_memory(device: str, root: Path) -> dict:
    """Peak memory of the real training loop (tiny SDXL, 4 steps) without samples and with samples every step."""
    from helpers.config import build_config, save_config
    from helpers.dataset.demo import make_demo_dataset
    from helpers.models.tiny import save_tiny_model
    from helpers.training.config import TrainConfig

    save_tiny_model(root / "models" / "tiny-sdxl", "sdxl")
    make_demo_dataset(root / "datasets" / "demo", n=4)
    out = {}
    for name, sampling in (("without_samples", {"prompts": []}),
                           ("samples_every_step", {"prompts": ["a red circle", "a blue square --n blurry"],
                                                   "every_n_steps": 1, "at_start": True, "steps": 25})):
        cfg = build_config(TrainConfig, template="demo_tiny", overrides={
            "device": device, "max_steps": 4, "saving": {"save_every_n_epochs": 0, "state_every_n_steps": 0},
            "sampling": sampling})
        run = root / "runs" / name
        run.mkdir(parents=True)
        save_config(cfg, run / "config.toml")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "helpers.training", str(run / "config.toml"), "--workspace", str(root),
                        "--progress", "off"], check=True, cwd=ROOT, capture_output=True)
        records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        steps = [r for r in records if "step" in r and "event" not in r]
        samples = [r for r in records if r.get("event") == "samples"]
        out[name] = {"peak_memory_gb": max(r["peak_memory_gb"] for r in steps), "steps": len(steps),
                     "sample_rounds": len(samples), "wall_s": round(time.perf_counter() - started, 1)}
    out["sampling_extra_peak_gb"] = round(out["samples_every_step"]["peak_memory_gb"]
                                          - out["without_samples"]["peak_memory_gb"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="timed images per case")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--cuda-model", choices=["real", "tiny"], default="real")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the CPU figures are one-thread regression numbers (see engine-facts §0)
    from train_step import build_tiny_sdxl

    cpu = torch.device("cpu")
    result = {"torch": torch.__version__, "cpu": {"model": "tiny SDXL (CI regression only)", "threads": 1}}
    result["cpu"]["generation"] = bench_generation(build_tiny_sdxl(), cpu, size=256, steps=args.steps,
                                                   images=args.images, rank=args.rank)
    if not args.skip_training:
        with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
            result["cpu"]["training_memory"] = bench_training_memory("cpu", Path(tmp))
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        bundle = build_cuda_model(args.cuda_model, cuda)
        size = 1024 if args.cuda_model == "real" else 256
        gen = bench_generation(bundle, cuda, size=size, steps=args.steps, images=args.images, rank=args.rank)
        gen.update(estimate_check(bundle, gen, torch.bfloat16, torch.bfloat16))
        result["cuda"] = {"device": torch.cuda.get_device_name(), "model": f"SDXL {args.cuda_model} (random "
                          "weights, bf16)", "generation": gen}
        del bundle
        torch.cuda.empty_cache()
        if not args.skip_training:
            with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
                result["cuda"]["training_memory"] = bench_training_memory("cuda", Path(tmp))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
