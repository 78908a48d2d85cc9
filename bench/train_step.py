"""Training-step speed of the real loop code: s/step, images/s, peak memory (and MFU on CUDA). Prints JSON.

CPU (default when there is no GPU): the tiny SDXL at 64² — a regression number for CI, not a speed claim.
CUDA: the real SDXL architecture (shipped configs, random weights: same FLOPs as the real model) at 1024² and
512²; MFU = images/s × (U-Net forward+backward FLOPs per image, counted with torch's FlopCounterMode on the
meta device: 20.2 TFLOP at 1024²) / the GPU's dense bf16 peak.

    python bench/train_step.py                          # auto: CUDA if present, else tiny on CPU
    python bench/train_step.py --device cuda --optimizer AdamW --gradient-checkpointing --train-text-encoder
    python bench/train_step.py --count-flops-only       # FLOPs per image of the real configs (CPU, seconds)
    python bench/train_step.py --device cuda --ema cpu  # EMA kept in CPU memory: its update time per step

The step is ``helpers.training.loop.run_optimizer_step`` on cached-latent batches (``--pixels`` adds the VAE
encode, as a run without latent cache does).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# dense bf16/fp16 tensor-core peaks (TFLOPS, no sparsity) from NVIDIA datasheets
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "A6000": 154.8, "A40": 149.7,
               "L40S": 362.0, "L4": 121.0, "4090": 165.2, "3090": 71.0}


def build_real_sdxl(device: torch.device):
    """SDXL with random weights from the shipped configs (U-Net 2.6 B, VAE, CLIP-L + bigG)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from helpers.models.tiny import build_tokenizer

    cfg = Path(__file__).resolve().parent.parent / "helpers" / "models" / "configs" / "sdxl"
    read = lambda p: json.loads((cfg / p).read_text())  # noqa: E731
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(read("unet/config.json"))
        vae = AutoencoderKL.from_config(read("vae/config.json"))
        te1 = CLIPTextModel(CLIPTextConfig(**read("text_encoder/config.json")))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**read("text_encoder_2/config.json")))
    import tempfile

    tok_dir = Path(tempfile.mkdtemp(prefix="bench-tok-"))
    toks = [build_tokenizer(tok_dir / "t1"), build_tokenizer(tok_dir / "t2", "!")]
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    return types.SimpleNamespace(arch="sdxl", prediction="epsilon", unet=unet, vae=vae, text_encoders=[te1, te2],
                                 tokenizers=toks, noise_scheduler=sched)


def build_tiny_sdxl():
    from diffusers import DDPMScheduler

    from helpers.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sdxl")
    sched = DDPMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    return types.SimpleNamespace(arch="sdxl", prediction="epsilon", unet=pipe.unet, vae=pipe.vae,
                                 text_encoders=[pipe.text_encoder, pipe.text_encoder_2],
                                 tokenizers=[pipe.tokenizer, pipe.tokenizer_2], noise_scheduler=sched)


def count_unet_train_flops(unet_config: dict, resolution: int, text_dim: int = 2048, pooled_dim: int = 1280) -> float:
    """FLOPs of one U-Net forward + backward (weights trained) for one image, on the meta device."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        lat = resolution // 8
        x = torch.randn(1, unet_config.get("in_channels", 4), lat, lat)
        t = torch.tensor([500])
        ctx = torch.randn(1, 77, unet_config.get("cross_attention_dim", text_dim))
        extra = {}
        if unet_config.get("addition_embed_type") == "text_time":
            extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pooled_dim), "time_ids": torch.randn(1, 6)}}
    with FlopCounterMode(display=False) as counter:
        unet(x, t, encoder_hidden_states=ctx, **extra).sample.sum().backward()
    return float(counter.get_total_flops())


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():  # "H100 PCIe" before "H100": dict order matters
        if key in name:
            return value
    return None


def synthetic_batch(batch_size: int, resolution: int, pixels: bool, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([[resolution, resolution]] * batch_size)
    batch = {"captions": ["a photo of a cat sitting on a red chair, detailed"] * batch_size,
             "original_sizes": size, "crop_top_lefts": torch.zeros_like(size), "target_sizes": size,
             "seeds": [seed * 1000 + i for i in range(batch_size)]}
    if pixels:
        batch["pixels"] = torch.rand(batch_size, 3, resolution, resolution, generator=g) * 2 - 1
    else:
        batch["latents"] = torch.randn(batch_size, 4, resolution // 8, resolution // 8, generator=g)
    return batch


def bench_steps(bundle, *, resolution: int, batch_size: int, steps: int, warmup: int, mixed_precision: str,
                optimizer_name: str, gradient_checkpointing: bool, train_text_encoder: bool, pixels: bool,
                device: str, ema: str = "off") -> dict:
    """Run the loop's optimizer step ``warmup + steps`` times; timings over the last ``steps``."""
    from accelerate.state import AcceleratorState

    from helpers.training.components import DTYPES, choose_trained_models, model_family, prepare_models
    from helpers.training.config import ObjectiveConfig
    from helpers.training.ema import ExponentialMovingAverage
    from helpers.training.loop import run_optimizer_step, start_accelerator
    from helpers.training.optim import build_optimizer
    from helpers.training.progress import peak_memory_gb
    from helpers.training.schedules import LearningRateSchedule, RunPlan

    AcceleratorState._reset_state(True)
    accelerator = start_accelerator(mixed_precision, device, train_text_encoder)
    dev = accelerator.device
    trained = choose_trained_models(bundle, unet_lr=1e-6, train_text_encoder=train_text_encoder, te_lrs=[None, None])
    prepare_models(bundle, trained, device=dev, weight_dtype=torch.float32, frozen_dtype=DTYPES[mixed_precision],
                   vae_dtype=torch.float32, gradient_checkpointing=gradient_checkpointing, attention="sdpa")
    optimizer = build_optimizer(trained.parameter_groups(), optimizer_name, weight_decay=0.01, betas=(0.9, 0.999),
                                eps=1e-8)
    plan = RunPlan(epochs=[1], steps_per_epoch=[steps + warmup],
                   learning_rates=[{g["name"]: g["lr"] for g in optimizer.param_groups}])
    scheduler = LearningRateSchedule(optimizer, plan, "constant", warmup_steps=0, total_steps=steps + warmup)
    names = list(trained.modules)
    *wrapped, optimizer = accelerator.prepare(*trained.modules.values(), optimizer)
    modules = dict(zip(names, wrapped, strict=True))
    settings = dict(family=model_family(bundle.arch), unet=modules["unet"], vae=bundle.vae,
                    tokenizers=bundle.tokenizers,
                    text_encoders=[modules.get(f"te{i + 1}", te) for i, te in enumerate(bundle.text_encoders)],
                    unet_dtype=bundle.unet.dtype, alphas_cumprod=bundle.noise_scheduler.alphas_cumprod.to(dev),
                    objective=ObjectiveConfig(), prediction=bundle.prediction, train_text=len(names) > 1)
    average = None if ema == "off" else ExponentialMovingAverage(
        trained.modules, decay=0.9999, device="cpu" if ema == "cpu" else dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times, ema_times, losses = [], [], []
    for i in range(warmup + steps):
        batch = synthetic_batch(batch_size, resolution, pixels, i)
        sync()
        t0 = time.perf_counter()
        losses.append(run_optimizer_step([batch], accelerator, wrapped, optimizer, scheduler, 1.0, settings))
        sync()
        t1 = time.perf_counter()
        if average is not None:  # the loop updates the EMA right after the optimizer step
            average.update(i + 1)
            sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            ema_times.append(time.perf_counter() - t1)
    s_per_step = sorted(times)[len(times) // 2]  # median: robust to a stray slow step
    return {"resolution": resolution, "batch_size": batch_size, "steps_timed": steps,
            "s_per_step": round(s_per_step, 4), "images_per_s": round(batch_size / s_per_step, 3),
            "peak_memory_gb": round(peak_memory_gb(dev), 2), "last_loss": round(losses[-1], 4),
            "trained": names, "ema": ema, "ema_update_s": round(sorted(ema_times)[len(ema_times) // 2], 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--resolutions", default=None, help="comma list (default: CUDA 1024,512; CPU 64)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default CUDA 10, CPU 5)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mixed-precision", default=None, choices=["no", "fp16", "bf16"],
                        help="default: bf16 on CUDA, no on CPU")
    parser.add_argument("--optimizer", default=None, choices=["AdamW", "AdamW8bit", "Lion8bit", "Adafactor"],
                        help="default: AdamW8bit on CUDA (the guide's), AdamW on CPU (bitsandbytes' CPU path is slow)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--train-text-encoder", action="store_true")
    parser.add_argument("--pixels", action="store_true", help="encode pixels with the VAE every step (no cache)")
    parser.add_argument("--ema", default="off", choices=["off", "auto", "cpu"],
                        help="update an EMA of the trained weights after each step: beside them, or on the CPU")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's dense bf16 peak")
    parser.add_argument("--count-flops-only", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1) if args.device == "cpu" or not torch.cuda.is_available() else None

    cfg_dir = Path(__file__).resolve().parent.parent / "helpers" / "models" / "configs" / "sdxl"
    unet_config = json.loads((cfg_dir / "unet" / "config.json").read_text())
    if args.count_flops_only:
        out = {f"sdxl_unet_train_tflop_per_image_{r}": round(count_unet_train_flops(unet_config, r) / 1e12, 2)
               for r in (1024, 512)}
        print(json.dumps(out, indent=1))
        return 0
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    device = "cuda" if cuda else "cpu"
    resolutions = [int(r) for r in (args.resolutions or ("1024,512" if cuda else "64")).split(",")]
    steps = args.steps or (10 if cuda else 5)
    mixed = args.mixed_precision or ("bf16" if cuda else "no")
    args.optimizer = args.optimizer or ("AdamW8bit" if cuda else "AdamW")
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu (1 thread)", "torch": torch.__version__,
              "model": "SDXL (real architecture, random weights)" if cuda else "tiny SDXL (CI regression only)",
              "optimizer": args.optimizer, "mixed_precision": mixed,
              "gradient_checkpointing": args.gradient_checkpointing, "latents": "encoded each step" if args.pixels
              else "cached (VAE not in the step)", "runs": []}
    for resolution in resolutions:
        bundle = build_real_sdxl(torch.device("cpu")) if cuda else build_tiny_sdxl()
        run = bench_steps(bundle, resolution=resolution, batch_size=args.batch_size, steps=steps,
                          warmup=args.warmup, mixed_precision=mixed, optimizer_name=args.optimizer,
                          gradient_checkpointing=args.gradient_checkpointing,
                          train_text_encoder=args.train_text_encoder, pixels=args.pixels, device=device,
                          ema=args.ema)
        config = dict(bundle.unet.config)
        flops = count_unet_train_flops(config, resolution, pooled_dim=bundle.text_encoders[1].config.projection_dim)
        run["unet_train_gflop_per_image"] = round(flops / 1e9, 2)
        run["achieved_tflops"] = round(run["images_per_s"] * flops / 1e12, 4)
        peak = args.peak_tflops or (peak_tflops(result["device"]) if cuda else None)
        if peak:
            run["peak_tflops"] = peak
            run["mfu"] = round(run["achieved_tflops"] / peak, 3)
        result["runs"].append(run)
        del bundle
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
