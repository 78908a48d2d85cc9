"""Training-step speed of the real loop code: s/step, images/s, peak memory (and MFU on CUDA). Prints JSON.

CPU (default when there is no GPU): the tiny SDXL at 64² — a regression number for CI, not a speed claim.
CUDA: the real SDXL architecture (shipped configs, random weights: same FLOPs as the real model) at 1024² and
512²; MFU = images/s × (U-Net forward+backward FLOPs per image, counted with torch's FlopCounterMode on the
meta device: 20.2 TFLOP at 1024²) / the GPU's dense bf16 peak.

    python bench/train_step.py                          # auto: CUDA if present, else tiny on CPU
    python bench/train_step.py --device cuda --optimizer AdamW --gradient-checkpointing --train-text-encoder
    python bench/train_step.py --count-flops-only       # FLOPs per image of the real configs (CPU, seconds)
    python bench/train_step.py --device cuda --ema cpu  # EMA kept in CPU memory: its update time per step
    python bench/train_step.py --template sdxl_finetune_a6000 --resolutions 1024   # a template's settings
    python bench/train_step.py --arch sd15 --resolutions 512                       # SD 1.5
    python bench/train_step.py --template sdxl_finetune_a6000 --calibrate          # + a row in speeds.toml
    python bench/train_step.py --mode frozen,lora,lokr,full                         # adapters vs the frozen base
    python bench/train_step.py --device cuda --mode lora --gradient-checkpointing --resolutions 1024  # 24 GB goal

Modes: ``full`` fine-tune (the default), ``lora`` / ``lokr`` / ``locon`` / ``loha`` adapters through the trainer's own
``training.network.adapter_models`` (rank ``--dim``, LoKr ``--factor``; base frozen in bf16 on CUDA, fp32 on CPU),
and ``frozen``: a bare forward + backward of the frozen model (the gradient flows to the input latents, no weight
gradients, no optimizer step), the floor an adapter step is measured against (``overhead_vs_frozen``). Several
modes run one child process each, so every mode's peak memory is its own.

Every run is compared with the pre-flight's FLOP-model estimate for the same settings (images/s, VRAM):
``vs_estimate`` > 1 means faster / more memory than estimated. ``--calibrate`` (CUDA only) appends each run to
``helpers/training/speeds.toml``, after which the pre-flight quotes it as "measured".

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


def build_real_model(arch: str, device: torch.device):
    """SDXL (U-Net 2.6 B, VAE, CLIP-L + bigG) or SD 1.5 (U-Net 0.86 B, VAE, CLIP-L) with random weights from the
    shipped configs: the real FLOPs and memory."""
    import tempfile

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from helpers.models.tiny import build_tokenizer

    cfg = Path(__file__).resolve().parent.parent / "helpers" / "models" / "configs" / arch
    read = lambda p: json.loads((cfg / p).read_text())  # noqa: E731
    sdxl = arch == "sdxl"
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(read("unet/config.json"))
        vae = AutoencoderKL.from_config(read("vae/config.json"))
        encoders = [CLIPTextModel(CLIPTextConfig(**read("text_encoder/config.json")))]
        if sdxl:
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**read("text_encoder_2/config.json"))))
    tok_dir = Path(tempfile.mkdtemp(prefix="bench-tok-"))
    toks = [build_tokenizer(tok_dir / "t1")] + ([build_tokenizer(tok_dir / "t2", "!")] if sdxl else [])
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    return types.SimpleNamespace(arch=arch, prediction="epsilon", unet=unet, vae=vae, text_encoders=encoders,
                                 tokenizers=toks, noise_scheduler=sched)


def build_real_sdxl(device: torch.device):
    """The real SDXL architecture with random weights (``bench/generation.py`` builds it from here too)."""
    return build_real_model("sdxl", device)


def build_tiny_sdxl():
    from diffusers import DDPMScheduler

    from helpers.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sdxl")
    sched = DDPMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    return types.SimpleNamespace(arch="sdxl", prediction="epsilon", unet=pipe.unet, vae=pipe.vae,
                                 text_encoders=[pipe.text_encoder, pipe.text_encoder_2],
                                 tokenizers=[pipe.tokenizer, pipe.tokenizer_2], noise_scheduler=sched)


def template_settings(name: str) -> dict:
    """The bench flags a training template implies (what it trains, precision, memory savers, latents, EMA)."""
    from helpers.config import build_config
    from helpers.training.config import TrainConfig

    cfg = build_config(TrainConfig, name)
    network = {"mode": cfg.network.algo, "dim": cfg.network.dim, "factor": cfg.network.factor} \
        if cfg.network.enabled else {}
    return {**network, "optimizer": cfg.optimizer.optimizer, "mixed_precision": cfg.precision.mixed_precision,
            "gradient_checkpointing": cfg.precision.gradient_checkpointing,
            "train_text_encoder": cfg.optimizer.train_text_encoder or cfg.network.train_text_encoder,
            "pixels": cfg.data.cache_latents == "off",
            "ema": ("cpu" if cfg.ema.device == "cpu" else "auto") if cfg.ema.enabled else "off",
            "batch_size": cfg.batch_size, "resolutions": str(cfg.data.resolution)}


def estimate_for(arch: str, resolution: int, args, gpu: str | None, trained_params: int = 0) -> dict:
    """The pre-flight's FLOP-model figures for exactly these settings (no measured row: this is the check); an
    adapter mode with its trained parameter count, the base frozen in bf16."""
    from helpers.training import preflight

    adapter = None if args.mode == "full" else preflight.AdapterPlan(trained_params, args.mode, 2)
    est = preflight.estimate_run(arch=arch, resolution=resolution, batch_size=args.batch_size, total_images=1,
                                 optimizer=args.optimizer, train_te1=args.train_text_encoder,
                                 train_te2=args.train_text_encoder and arch == "sdxl",
                                 mixed_precision=args.mixed_precision, full_half=False,
                                 gradient_checkpointing=args.gradient_checkpointing, vae_fp32=True,
                                 cached_latents=not args.pixels, gpu_name=gpu, ema_on_gpu=args.ema == "auto",
                                 adapter=adapter)
    return {"images_per_s": round(est.images_per_s, 3) if est.images_per_s else None, "vram_gb": est.vram_gb,
            "vram_by_part": est.vram_parts, "speed_source": est.speed_source}


def compare(run: dict, estimate: dict) -> dict:
    """measured / estimated: images/s, and peak memory (torch's allocations vs the estimate less its context)."""
    out = {}
    if estimate["images_per_s"]:
        out["images_per_s"] = round(run["images_per_s"] / estimate["images_per_s"], 3)
    allocated = estimate["vram_gb"] - estimate["vram_by_part"].get("context", 0)
    out["peak_memory"] = round(run["peak_memory_gb"] / allocated, 3) if allocated else None
    return out


def calibrate(run: dict, arch: str, args, gpu: str) -> None:
    from helpers.training.calibration import add_measurement

    add_measurement({"gpu": gpu, "arch": arch, "resolution": run["resolution"], "mode": args.mode,
                     "batch_size": args.batch_size, "gradient_checkpointing": args.gradient_checkpointing,
                     "cached_latents": not args.pixels, "train_text_encoder": args.train_text_encoder,
                     "optimizer": args.optimizer, "mixed_precision": args.mixed_precision,
                     "ema": args.ema != "off", "s_per_step": run["s_per_step"],
                     "peak_memory_gb": run["peak_memory_gb"], "software": "tunebook",
                     "source": f"bench/train_step.py, torch {torch.__version__}, random weights, real architecture"})


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


def adapter_config(mode: str, dim: int, factor: int, cuda: bool, train_text_encoder: bool):
    """The ``[network]`` a bench mode trains (the trainer's own config class and defaults)."""
    from helpers.training.network import NetworkConfig

    return NetworkConfig(algo=mode, dim=dim, alpha=dim / 2, factor=factor if mode == "lokr" else -1,
                         conv_dim=dim if mode in ("locon", "loha") else 0,
                         preset="full-unet" if mode in ("locon", "loha") else "attn-mlp",
                         train_text_encoder=train_text_encoder, base_precision="bf16" if cuda else "fp32")


def frozen_steps(bundle, *, resolution: int, batch_size: int, steps: int, warmup: int, device: str,
                 mixed_precision: str, gradient_checkpointing: bool, pixels: bool) -> list[float]:
    """Seconds of a bare forward + backward of the frozen model (the loss's gradient to the input latents)."""
    from accelerate.state import AcceleratorState

    from helpers.training.components import DTYPES, TrainedModels, model_family, prepare_models
    from helpers.training.config import ObjectiveConfig
    from helpers.training.loop import compute_loss, start_accelerator

    AcceleratorState._reset_state(True)
    accelerator = start_accelerator(mixed_precision, device, False)
    dev = accelerator.device
    base = DTYPES[mixed_precision] if dev.type == "cuda" else torch.float32  # as the adapter modes hold it
    prepare_models(bundle, TrainedModels(), device=dev, weight_dtype=base, frozen_dtype=base,
                   vae_dtype=torch.float32, gradient_checkpointing=False, attention="sdpa")
    for model in (bundle.unet, bundle.vae, *bundle.text_encoders):
        model.requires_grad_(False)
    if gradient_checkpointing:
        bundle.unet.enable_gradient_checkpointing()  # (prepare_models does it for trained models only)
    settings = dict(family=model_family(bundle.arch), unet=bundle.unet, vae=bundle.vae, tokenizers=bundle.tokenizers,
                    text_encoders=bundle.text_encoders, unet_dtype=bundle.unet.dtype,
                    alphas_cumprod=bundle.noise_scheduler.alphas_cumprod.to(dev), objective=ObjectiveConfig(),
                    prediction=bundle.prediction, train_text=False)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times, cpu_times = [], []
    for i in range(warmup + steps):
        batch = synthetic_batch(batch_size, resolution, pixels, i)
        key = "pixels" if pixels else "latents"
        batch[key] = batch[key].to(dev).requires_grad_(True)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        with accelerator.autocast():
            loss = compute_loss(batch, **settings)
        loss.backward()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    return times, cpu_times


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def bench_steps(bundle, *, resolution: int, batch_size: int, steps: int, warmup: int, mixed_precision: str,
                optimizer_name: str, gradient_checkpointing: bool, train_text_encoder: bool, pixels: bool,
                device: str, ema: str = "off", mode: str = "full", dim: int = 32, factor: int = 8) -> dict:
    """Run the loop's optimizer step ``warmup + steps`` times; timings over the last ``steps``."""
    from accelerate.state import AcceleratorState

    from helpers.training.components import DTYPES, choose_trained_models, model_family, prepare_models
    from helpers.training.config import ObjectiveConfig
    from helpers.training.ema import ExponentialMovingAverage
    from helpers.training.loop import run_optimizer_step, start_accelerator
    from helpers.training.optim import build_optimizer
    from helpers.training.progress import peak_memory_gb
    from helpers.training.schedules import LearningRateSchedule, RunPlan

    if mode == "frozen":
        times, cpu_times = frozen_steps(bundle, resolution=resolution, batch_size=batch_size, steps=steps, warmup=warmup,
                             device=device, mixed_precision=mixed_precision,
                             gradient_checkpointing=gradient_checkpointing, pixels=pixels)
        dev = torch.device("cuda" if device == "cuda" else "cpu")
        s_per_step = sorted(times)[len(times) // 2]
        return {"mode": mode, "resolution": resolution, "batch_size": batch_size, "steps_timed": steps,
                "s_per_step_min": round(min(times), 4), "cpu_s_per_step": round(median(cpu_times), 4),
                "s_per_step": round(s_per_step, 4), "images_per_s": round(batch_size / s_per_step, 3),
                "peak_memory_gb": round(peak_memory_gb(dev), 2), "trained": [], "trained_params": 0}
    AcceleratorState._reset_state(True)
    accelerator = start_accelerator(mixed_precision, device, train_text_encoder)
    dev = accelerator.device
    if mode == "full":
        trained = choose_trained_models(bundle, unet_lr=1e-6, train_text_encoder=train_text_encoder,
                                        te_lrs=[None, None])
        prepare_models(bundle, trained, device=dev, weight_dtype=torch.float32, frozen_dtype=DTYPES[mixed_precision],
                       vae_dtype=torch.float32, gradient_checkpointing=gradient_checkpointing, attention="sdpa")
    else:
        from helpers.training.network import adapter_models

        trained = adapter_models(bundle, adapter_config(mode, dim, factor, dev.type == "cuda", train_text_encoder),
                                 base_lr=1e-4, device=dev, vae_dtype=torch.float32,
                                 gradient_checkpointing=gradient_checkpointing, attention="sdpa")
    optimizer = build_optimizer(trained.parameter_groups(), optimizer_name, weight_decay=0.01, betas=(0.9, 0.999),
                                eps=1e-8)
    plan = RunPlan(epochs=[1], steps_per_epoch=[steps + warmup],
                   learning_rates=[{g["name"]: g["lr"] for g in optimizer.param_groups}])
    scheduler = LearningRateSchedule(optimizer, plan, "constant", warmup_steps=0, total_steps=steps + warmup)
    names = list(trained.modules)
    *wrapped, optimizer = accelerator.prepare(*trained.modules.values(), optimizer)
    if dev.type == "cuda":  # the steps' peak, not the fp32 build of what then became fp16
        torch.cuda.reset_peak_memory_stats(dev)
    modules = dict(zip(names, wrapped, strict=True))
    settings = dict(family=model_family(bundle.arch), unet=modules["unet"], vae=bundle.vae,
                    tokenizers=bundle.tokenizers,
                    text_encoders=[modules.get(f"te{i + 1}", te) for i, te in enumerate(bundle.text_encoders)],
                    unet_dtype=bundle.unet.dtype, alphas_cumprod=bundle.noise_scheduler.alphas_cumprod.to(dev),
                    objective=ObjectiveConfig(), prediction=bundle.prediction, train_text=len(names) > 1)
    average = None if ema == "off" else ExponentialMovingAverage(
        trained.modules, decay=0.9999, device="cpu" if ema == "cpu" else dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times, ema_times, losses, cpu_times = [], [], [], []
    for i in range(warmup + steps):
        batch = synthetic_batch(batch_size, resolution, pixels, i)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(run_optimizer_step([batch], accelerator, wrapped, optimizer, scheduler, 1.0, settings))
        sync()
        t1, c1 = time.perf_counter(), time.process_time()
        if average is not None:  # the loop updates the EMA right after the optimizer step
            average.update(i + 1)
            sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            ema_times.append(time.perf_counter() - t1)
            cpu_times.append(c1 - c0)  # this process's CPU time: what a busy shared CPU does not inflate
    s_per_step = sorted(times)[len(times) // 2]  # median: robust to a stray slow step
    trained_params = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    return {"mode": mode, "trained_params": trained_params, "resolution": resolution, "batch_size": batch_size,
            "steps_timed": steps, "s_per_step_min": round(min(times), 4),
            "cpu_s_per_step": round(median(cpu_times), 4),
            "s_per_step": round(s_per_step, 4), "images_per_s": round(batch_size / s_per_step, 3),
            "peak_memory_gb": round(peak_memory_gb(dev), 2), "last_loss": round(losses[-1], 4),
            "trained": names, "ema": ema, "ema_update_s": round(sorted(ema_times)[len(ema_times) // 2], 4)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--arch", default="sdxl", choices=["sdxl", "sd15"], help="model family (real size on CUDA)")
    parser.add_argument("--template", help="take optimizer, precision, memory savers, latents, EMA, batch size "
                        "and resolution from this training template (flags given after it still win)")
    parser.add_argument("--resolutions", default=None, help="comma list (default: CUDA 1024,512 / SD 1.5 512; CPU 64)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default CUDA 10, CPU 5)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mixed-precision", default=None, choices=["no", "fp16", "bf16"],
                        help="default: bf16 on CUDA, no on CPU")
    parser.add_argument("--optimizer", default=None, choices=["AdamW", "AdamW8bit", "Lion8bit", "Adafactor"],
                        help="default: AdamW8bit on CUDA (the guide's), AdamW on CPU (bitsandbytes' CPU path is slow)")
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None)
    parser.add_argument("--train-text-encoder", action="store_true", default=None)
    parser.add_argument("--pixels", action="store_true", default=None, help="encode pixels with the VAE every step "
                        "(no cache)")
    parser.add_argument("--ema", default=None, choices=["off", "auto", "cpu"],
                        help="update an EMA of the trained weights after each step: beside them, or on the CPU")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's dense bf16 peak")
    parser.add_argument("--calibrate", action="store_true", help="append each run to helpers/training/speeds.toml "
                        "(CUDA only)")
    parser.add_argument("--count-flops-only", action="store_true")
    parser.add_argument("--mode", default=None, help="full, lora, lokr, locon, loha or frozen (the bare frozen "
                        "forward + backward); a comma list runs each in its own process and compares them")
    parser.add_argument("--dim", type=int, default=None, help="adapter rank (default: 32 on CUDA, 4 on the tiny "
                        "CPU model, whose layers are 32-64 wide)")
    parser.add_argument("--size", default="auto", choices=["auto", "real", "tiny"], help="model size: auto = "
                        "the real architecture on CUDA, the tiny SDXL on CPU; real on a CPU: real layer widths at a "
                        "small resolution (e.g. --arch sd15 --resolutions 256: minutes, ~6 GB RAM without --mode full)")
    parser.add_argument("--factor", type=int, default=None, help="LoKr factor (default: 8 on CUDA, 4 on CPU)")
    args = parser.parse_args(argv)
    settings = template_settings(args.template) if args.template else {}
    for key, value in settings.items():  # a flag given on the command line wins over the template
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("gradient_checkpointing", "train_text_encoder", "pixels"):
        setattr(args, key, bool(getattr(args, key)))
    args.ema = args.ema or "off"
    args.mode = args.mode or "full"
    args.batch_size = args.batch_size or 1
    return args


def main(argv: list[str] | None = None) -> int:
    from helpers.training.preflight import count_unet_train_flops, gpu_peak_tflops

    args = parse_args(argv)
    torch.set_num_threads(1) if args.device == "cpu" or not torch.cuda.is_available() else None
    if args.count_flops_only:
        cfg_dir = Path(__file__).resolve().parent.parent / "helpers" / "models" / "configs"
        sdxl = json.loads((cfg_dir / "sdxl" / "unet" / "config.json").read_text())
        sd15 = json.loads((cfg_dir / "sd15" / "unet" / "config.json").read_text())
        out = {f"sdxl_unet_train_tflop_per_image_{r}": round(count_unet_train_flops(sdxl, r) / 1e12, 2)
               for r in (1024, 512)}
        out["sd15_unet_train_tflop_per_image_512"] = round(count_unet_train_flops(sd15, 512) / 1e12, 2)
        # the same with the U-Net frozen (an adapter step: input gradients only), preflight.FROZEN_TRAIN_FLOPS
        out["sdxl_unet_frozen_tflop_per_image_1024"] = round(count_unet_train_flops(sdxl, 1024, frozen=True) / 1e12, 2)
        out["sd15_unet_frozen_tflop_per_image_512"] = round(count_unet_train_flops(sd15, 512, frozen=True) / 1e12, 2)
        print(json.dumps(out, indent=1))
        return 0
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    if len(modes) > 1:
        return compare_modes(modes, argv if argv is not None else sys.argv[1:])
    args.mode = modes[0]
    real = cuda or args.size == "real"
    args.dim = args.dim or (32 if real else 4)
    args.factor = args.factor or (8 if real else 4)
    if args.calibrate and not cuda:
        raise SystemExit("--calibrate needs a CUDA GPU: a CPU figure says nothing about a rented machine")
    device = "cuda" if cuda else "cpu"
    default_res = ("1024,512" if args.arch == "sdxl" else "512") if cuda else "256" if real else "64"
    resolutions = [int(r) for r in (args.resolutions or default_res).split(",")]
    steps = args.steps or (10 if cuda else 5)
    args.mixed_precision = args.mixed_precision or ("bf16" if cuda else "no")
    args.optimizer = args.optimizer or ("AdamW8bit" if cuda else "AdamW")
    gpu = torch.cuda.get_device_name() if cuda else None
    result = {"device": gpu or "cpu (1 thread)", "torch": torch.__version__,
              "model": f"{args.arch.upper()} (real architecture, random weights)" if real
              else "tiny SDXL (CI regression only)", "template": args.template, "optimizer": args.optimizer,
              "mixed_precision": args.mixed_precision, "gradient_checkpointing": args.gradient_checkpointing,
              "train_text_encoder": args.train_text_encoder, "ema": args.ema,
              "latents": "encoded each step" if args.pixels else "cached (VAE not in the step)", "mode": args.mode,
              **({"dim": args.dim, "factor": args.factor} if args.mode not in ("full", "frozen") else {}),
              "runs": []}
    for resolution in resolutions:
        if real:
            bundle = build_real_model(args.arch, torch.device(device))
        else:
            bundle = build_tiny_sdxl()
        run = bench_steps(bundle, resolution=resolution, batch_size=args.batch_size, steps=steps,
                          warmup=args.warmup, mixed_precision=args.mixed_precision, optimizer_name=args.optimizer,
                          gradient_checkpointing=args.gradient_checkpointing,
                          train_text_encoder=args.train_text_encoder, pixels=args.pixels, device=device,
                          ema=args.ema, mode=args.mode, dim=args.dim, factor=args.factor)
        unet_config = dict(bundle.unet.config) if hasattr(bundle.unet, "config") else dict(bundle.unet.base.config)
        # MFU counts the FLOPs the step must do: a full fine-tune's, or the frozen model's (adapter, bare)
        flops = count_unet_train_flops(unet_config, resolution, frozen=args.mode != "full")
        run["unet_train_gflop_per_image"] = round(flops / 1e9, 2)
        run["achieved_tflops"] = round(run["images_per_s"] * flops / 1e12, 4)
        peak = args.peak_tflops or (gpu_peak_tflops(gpu) if cuda else None)
        if peak:
            run["peak_tflops"] = peak
            run["mfu"] = round(run["achieved_tflops"] / peak, 3)
        if cuda and args.mode != "frozen":
            run["estimate"] = estimate_for(args.arch, resolution, args, gpu, run["trained_params"])
            run["vs_estimate"] = compare(run, run["estimate"])
            if args.calibrate:  # an adapter's row has its algorithm as mode (what the pre-flight looks up)
                calibrate(run, args.arch, args, gpu)
        result["runs"].append(run)
        del bundle
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    print(json.dumps(result, indent=1))
    return 0


def compare_modes(modes: list[str], argv: list[str]) -> int:
    """Each mode in its own process (its own peak memory); one JSON with every run and each adapter's s/step
    over the bare frozen forward + backward's (``overhead_vs_frozen``) and the full fine-tune's."""
    import subprocess

    rest, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--mode":
            skip = True
        elif not item.startswith("--mode="):
            rest.append(item)
    results = {}
    for mode in modes:
        out = subprocess.run([sys.executable, __file__, *rest, "--mode", mode], capture_output=True, text=True,
                             check=True)
        results[mode] = json.loads(out.stdout[out.stdout.index("{"):])
    first = next(iter(results.values()))
    summary = {key: first[key] for key in ("device", "torch", "model", "optimizer", "mixed_precision",
                                           "gradient_checkpointing", "latents")}
    summary["modes"] = {m: {**{k: r[k] for k in ("dim", "factor") if k in r}, "runs": r["runs"]}
                        for m, r in results.items()}
    for index, _ in enumerate(first["runs"]):
        for ref in ("frozen", "full"):
            if ref not in results:
                continue
            base = results[ref]["runs"][index]
            for mode, r in results.items():
                if mode != ref and not (ref == "full" and mode == "frozen"):
                    run = r["runs"][index]  # wall clock (median / fastest), and CPU time (a shared CPU's
                    # other jobs inflate wall clock, not this process's CPU seconds)
                    run[f"overhead_vs_{ref}"] = round(run["s_per_step"] / base["s_per_step"], 3)
                    run[f"overhead_vs_{ref}_min"] = round(run["s_per_step_min"] / base["s_per_step_min"], 3)
                    run[f"overhead_vs_{ref}_cpu_time"] = round(run["cpu_s_per_step"] / base["cpu_s_per_step"], 3)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
