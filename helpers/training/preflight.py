"""Pre-flight: what a training run will need and cost before the GPU meter runs — VRAM, hours, money.

Estimates, not measurements (±30 %): memory from parameter counts and per-parameter bytes (weights, gradients,
optimizer state) plus an activation term per image; time from FLOPs per training image on the real SDXL /
SD 1.5 configs (counted with torch's FlopCounterMode, see shared reference engine-facts §7) at a model FLOP
utilisation typical of PyTorch diffusion training. The first real run's ``images_per_s`` in ``log.jsonl``
is the number to trust after that.
"""

from __future__ import annotations

from dataclasses import dataclass

# Parameter counts of the real models (diffusers configs of SDXL base 1.0 and SD 1.5).
PARAMS = {
    "sdxl": {"unet": 2_567_463_684, "te1": 123_060_480, "te2": 694_659_840, "vae": 83_653_863},
    "sd15": {"unet": 859_520_964, "te1": 123_060_480, "vae": 83_653_863},
}
# U-Net forward+backward FLOPs per image for a full fine-tune at the native resolution (FlopCounterMode,
# meta tensors, 77 tokens): SDXL 1024² 20.2 TFLOP, SD 1.5 512² 2.41 TFLOP; VAE encode 1024² 4.88 TFLOP.
TRAIN_FLOPS = {"sdxl": (20.2e12, 1024), "sd15": (2.41e12, 512)}
VAE_ENCODE_FLOPS_1024 = 4.88e12
# Activation memory per image at the native resolution with mixed precision, without / with gradient
# checkpointing (rough, from published sd-scripts/OneTrainer runs: SDXL FT batch 1 fits 24 GB only with
# checkpointing; 48 GB without). Scales with pixel count.
ACTIVATION_GB = {"sdxl": (14.0, 3.0), "sd15": (4.0, 1.0)}
# Dense bf16/fp16 tensor-core peaks (vendor datasheets) for the GPUs people rent.
GPU_PEAK_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L40": 181, "A6000": 155, "A40": 150,
                   "4090": 165, "3090": 71, "A10": 125, "L4": 121, "T4": 65, "V100": 125}
MFU = 0.35  # ~ what PyTorch SDXL sustains: 110 of 312 TFLOPS on an A100 at inference (HF TensorRT card)
CONTEXT_GB = 1.5  # CUDA context, allocator slack, cuDNN workspaces


@dataclass
class Estimate:
    vram_gb: float
    vram_parts: dict[str, float]
    images_per_s: float | None
    total_images: int
    hours: float | None
    cost: float | None
    fits: bool | None
    notes: list[str]

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in self.vram_parts.items())
        lines = [f"VRAM ≈ {self.vram_gb:.1f} GB ({parts})"]
        if self.images_per_s:
            lines.append(f"speed ≈ {self.images_per_s:.2f} images/s → {self.total_images} images in "
                         f"≈ {self.hours:.2f} h" + (f", ≈ {self.cost:.2f} at your price" if self.cost is not None else ""))
        lines += self.notes
        return "\n".join(lines)


def optimizer_bytes_per_param(optimizer: str, weight_bytes: int) -> float:
    """State bytes per trained parameter: AdamW two moments, AdamW8bit two 8-bit moments (+ small absmax;
    the paged variant can move them to CPU memory), Lion one moment, Prodigy four (moments, s, initial
    weights), ADOPT two fp32 moments, Adafactor factored second moment only (no momentum)."""
    per_param = {"AdamW8bit": 2.05, "PagedAdamW8bit": 2.05, "Lion8bit": 1.03, "Lion": weight_bytes,
                 "Prodigy": 4 * weight_bytes, "ADOPT": 8, "Adafactor": 0.1}
    return per_param.get(optimizer, 2 * weight_bytes)


def gpu_peak_tflops(gpu_name: str) -> float | None:
    name = gpu_name.upper().replace("RTX ", "").replace("NVIDIA ", "")
    for key, value in GPU_PEAK_TFLOPS.items():
        if key in name:
            return float(value)
    return None


def estimate_run(*, arch: str, resolution: int, batch_size: int, total_images: int, optimizer: str,
                 train_te1: bool, train_te2: bool, mixed_precision: str, full_half: bool,
                 gradient_checkpointing: bool, vae_fp32: bool, cached_latents: bool,
                 gpu_name: str | None = None, vram_gb: float | None = None,
                 price_per_hour: float | None = None, ema_on_gpu: bool = False) -> Estimate:
    """VRAM, speed, time and cost of a full fine-tune (pure: pass the numbers, get the estimate)."""
    p = PARAMS[arch]
    half = 2 if mixed_precision != "no" else 4
    wbytes = 2 if full_half else 4
    trained = p["unet"] + (p.get("te1", 0) if train_te1 else 0) + (p.get("te2", 0) if train_te2 else 0)
    frozen_te = (0 if train_te1 else p.get("te1", 0)) + (0 if train_te2 else p.get("te2", 0))
    gb = 1e9
    native_flops, native_res = TRAIN_FLOPS[arch]
    scale = (resolution / native_res) ** 2
    act_no_ckpt, act_ckpt = ACTIVATION_GB[arch]
    parts = {
        "weights": (trained * wbytes + frozen_te * half + p["vae"] * (4 if vae_fp32 else 2)) / gb,
        "gradients": trained * wbytes / gb,
        "optimizer": trained * optimizer_bytes_per_param(optimizer, wbytes) / gb,
        "ema": trained * 4 / gb if ema_on_gpu else 0.0,  # an fp32 copy of the trained weights
        "activations": batch_size * scale * (act_ckpt if gradient_checkpointing else act_no_ckpt),
        "context": CONTEXT_GB,
    }
    vram = sum(parts.values())
    notes: list[str] = []
    flops = native_flops * scale ** 1.1  # attention grows faster than pixels
    if gradient_checkpointing:
        flops *= 4 / 3  # one extra forward
    if not cached_latents:
        flops += VAE_ENCODE_FLOPS_1024 * (resolution / 1024) ** 2
    peak = gpu_peak_tflops(gpu_name) if gpu_name else None
    ips = peak * 1e12 * MFU / flops if peak else None
    hours = total_images / ips / 3600 if ips else None
    cost = hours * price_per_hour if hours is not None and price_per_hour else None
    fits = None if vram_gb is None else vram <= vram_gb * 0.95
    if fits is False:
        tips = ([] if optimizer != "AdamW" else ["AdamW8bit"]) + \
            ([] if gradient_checkpointing else ["gradient checkpointing"]) + \
            (["a smaller batch"] if batch_size > 1 else []) + (["freezing text encoder 2"] if train_te2 else []) + \
            (["ema.device = 'cpu'"] if ema_on_gpu else []) + \
            ["Adafactor (fixed LR)"] * (optimizer != "Adafactor")
        notes.append(f"does not fit in {vram_gb:.0f} GB: try " + ", ".join(tips))
    if gpu_name and peak is None:
        notes.append(f"no peak-FLOPs figure for {gpu_name}: time not estimated")
    if mixed_precision == "fp16" and full_half:
        notes.append("full fp16 needs AdamW8bit or it NaNs (the guide's experience)")
    return Estimate(round(vram, 1), {k: round(v, 1) for k, v in parts.items()}, ips, total_images,
                    hours, cost, fits, notes)


def count_training_images(dataset_root, default_repeats: int, epochs: int, caption_extension: str = ".txt") -> int:
    """Images seen over the run: images × folder repeats × epochs (kohya N_name folders counted)."""
    from helpers.training.data import scan_dataset

    items, _report = scan_dataset(dataset_root, caption_extension=caption_extension,
                                  default_repeats=default_repeats)
    return epochs * sum(item.repeats for item in items)


def estimate_config(cfg, ws, gpu_name: str | None = None, vram_gb: float | None = None,
                    price_per_hour: float | None = None, arch: str | None = None) -> Estimate:
    """The estimate for a TrainConfig on this workspace's dataset (GPU taken from torch when not given)."""
    from helpers.training.loop import resolve_dataset

    if gpu_name is None:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            gpu_name, vram_gb = props.name, props.total_memory / 2**30
    arch = arch or (cfg.model.arch if cfg.model.arch != "auto" else "sdxl")
    o, d, pr = cfg.optimizer, cfg.data, cfg.precision
    te1 = o.train_text_encoder and (o.learning_rate_te1 if o.learning_rate_te1 is not None else o.learning_rate) > 0
    te2 = arch == "sdxl" and o.train_text_encoder and \
        (o.learning_rate_te2 if o.learning_rate_te2 is not None else o.learning_rate) > 0
    images = count_training_images(resolve_dataset(d.dataset, ws.models if ws else None), d.repeats, cfg.epochs,
                                   d.caption_extension)
    if cfg.max_steps:
        images = min(images, cfg.max_steps * cfg.batch_size * o.gradient_accumulation_steps)
    return estimate_run(arch=arch, resolution=d.resolution, batch_size=cfg.batch_size, total_images=images,
                        optimizer=o.optimizer, train_te1=te1, train_te2=te2, mixed_precision=pr.mixed_precision,
                        full_half=pr.full_half_precision, gradient_checkpointing=pr.gradient_checkpointing,
                        vae_fp32=pr.vae_precision == "fp32", cached_latents=d.cache_latents != "off",
                        gpu_name=gpu_name, vram_gb=vram_gb, price_per_hour=price_per_hour,
                        ema_on_gpu=cfg.ema.enabled and cfg.ema.device != "cpu")

