"""Pre-flight: what a training run will need and cost before the GPU meter runs — VRAM, hours, money, disk.

Estimates, not measurements (±30 %): memory from parameter counts and per-parameter bytes (weights, gradients,
optimizer state) plus an activation term per image; time from a measured speed when ``speeds.toml`` has one for
this GPU and setting (``training.calibration``), else from FLOPs per training image (counted with torch's
FlopCounterMode, see shared reference engine-facts §7) at a model FLOP utilisation typical of PyTorch diffusion
training; the estimate says which. Parameter counts come from the chosen model's own file headers when it can
be read (``read_model_size``), else from the real SDXL / SD 1.5. The disk a run fills (model files kept, states,
latent cache) is ``estimate_disk``. The first real run's ``images_per_s`` in ``log.jsonl`` is the number to trust
after that (``bench/train_step.py --calibrate`` turns it into a table row).

An adapter run (``[network]`` on, ``adapter_plan``) is sized as what it is: the whole base frozen in half
precision (or an 8-bit U-Net), no gradients or optimizer state for it, the adapter's own fp32 weights, gradients
and optimizer state (its parameters counted by ``training.adapter_size`` on the meta device), and the frozen
U-Net's FLOPs: 14.2 instead of 20.2 TFLOP per 1024² SDXL image (input gradients, no weight gradients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from helpers.training.calibration import MeasuredSpeed, find_measured_speed

# Parameter counts of the real models (diffusers configs of SDXL base 1.0 and SD 1.5).
PARAMS = {
    "sdxl": {"unet": 2_567_463_684, "te1": 123_060_480, "te2": 694_659_840, "vae": 83_653_863},
    "sd15": {"unet": 859_520_964, "te1": 123_060_480, "vae": 83_653_863},
}
# U-Net forward+backward FLOPs per image for a full fine-tune at the native resolution (FlopCounterMode,
# meta tensors, 77 tokens): SDXL 1024² 20.2 TFLOP, SD 1.5 512² 2.41 TFLOP; VAE encode 1024² 4.88 TFLOP.
TRAIN_FLOPS = {"sdxl": (20.2e12, 1024), "sd15": (2.41e12, 512)}
# The same count with the U-Net frozen (weights requires_grad False, the gradient flowing to the input): what an
# adapter step costs, which skips the base's weight gradients but still back-propagates through every layer
# (and both operands of the attention matmuls): SDXL 1024² 14.2 TFLOP, SD 1.5 512² 1.73 TFLOP
# (``count_unet_train_flops(..., frozen=True)``; ``bench/train_step.py --count-flops-only`` prints both).
FROZEN_TRAIN_FLOPS = {"sdxl": 14.2e12, "sd15": 1.73e12}
# Adapters run in lycoris' bypass mode (base(x) + adapter(x): ``training.network``) add only their own small
# FLOPs; DoRA and the ``full`` delta rebuild the whole weight each step and pay its gradient too: about the
# weight-gradient share a full fine-tune pays (20.2 - 14.2 TFLOP at 1024²).
BASE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
VAE_ENCODE_FLOPS_1024 = 4.88e12
# Activation memory per image at the native resolution with mixed precision, without / with gradient
# checkpointing (rough, from published sd-scripts/OneTrainer runs: SDXL FT batch 1 fits 24 GB only with
# checkpointing; 48 GB without). Scales with pixel count.
ACTIVATION_GB = {"sdxl": (14.0, 3.0), "sd15": (4.0, 1.0)}
# Dense bf16/fp16 tensor-core peaks (vendor datasheets) for the GPUs people rent.
GPU_PEAK_TFLOPS = {"H200": 989, "H100 PCIE": 756, "H100": 989, "A100": 312, "L40S": 362, "L40": 181, "A6000": 155,
                   "A40": 150, "4090": 165, "3090": 71, "A10": 125, "L4": 121, "T4": 65, "V100": 125}
MFU = 0.35  # ~ what PyTorch SDXL sustains: 110 of 312 TFLOPS on an A100 at inference (HF TensorRT card)
CONTEXT_GB = 1.5  # CUDA context, allocator slack, cuDNN workspaces


@dataclass(frozen=True)
class ModelSize:
    """What the estimate sizes: parameters per component, U-Net fwd+bwd FLOPs per image at ``native_res`` and the
    activation memory per image there (without / with gradient checkpointing), and where the numbers came from."""

    arch: str
    params: dict[str, int]
    train_flops: float
    native_res: int
    activation_gb: tuple[float, float]
    source: str
    frozen_train_flops: float = 0.0  # fwd+bwd with the U-Net frozen (an adapter step); 0 = 0.703 x train_flops


def real_model_size(arch: str) -> ModelSize:
    """The real SDXL base / SD 1.5 (diffusers configs; FLOPs counted on them)."""
    flops, res = TRAIN_FLOPS[arch]
    return ModelSize(arch, dict(PARAMS[arch]), flops, res, ACTIVATION_GB[arch],
                     f"the real {'SDXL' if arch == 'sdxl' else 'SD 1.5'} sizes", FROZEN_TRAIN_FLOPS[arch])


@dataclass(frozen=True)
class AdapterPlan:
    """What an adapter run (``[network]`` on) trains and how its frozen base is held: trained parameters (U-Net
    and text-encoder adapters), the algorithm, the frozen weights' bytes per parameter (2 = fp16/bf16, 1 = int8)."""

    params: int
    algo: str = "lora"
    base_bytes: float = 2.0
    int8_unet: bool = False
    rebuilds_weight: bool = False  # DoRA / full: the merged weight is rebuilt, its gradient computed


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
    speed_source: str = ""  # "measured (RTX 4090, OneTrainer: https://...)" or "FLOP model (...)"
    model_source: str = ""  # "read from model.safetensors" or "the real SDXL sizes (...)"
    params: dict[str, int] = field(default_factory=dict)
    trained_params: int = 0  # what the optimizer updates (and a training state holds)

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in self.vram_parts.items())
        lines = [f"VRAM ≈ {self.vram_gb:.1f} GB ({parts}); sizes: {self.model_source}"]
        if self.images_per_s:
            lines.append(f"speed ≈ {self.images_per_s:.2f} images/s [{self.speed_source}] → {self.total_images} "
                         f"images in ≈ {self.hours:.2f} h" +
                         (f", ≈ {self.cost:.2f} at your price" if self.cost is not None else ""))
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
    """Dense bf16 peak of a GPU by name ("NVIDIA H100 PCIe" before "H100": the table's order matters)."""
    name = gpu_name.upper().replace("RTX ", "").replace("NVIDIA ", "")
    for key, value in GPU_PEAK_TFLOPS.items():
        if key in name:
            return float(value)
    return None


def estimate_run(*, arch: str, resolution: int, batch_size: int, total_images: int, optimizer: str,
                 train_te1: bool, train_te2: bool, mixed_precision: str, full_half: bool,
                 gradient_checkpointing: bool, vae_fp32: bool, cached_latents: bool,
                 gpu_name: str | None = None, vram_gb: float | None = None,
                 price_per_hour: float | None = None, ema_on_gpu: bool = False, model: ModelSize | None = None,
                 measured: MeasuredSpeed | None = None, adapter: AdapterPlan | None = None) -> Estimate:
    """VRAM, speed, time and cost of a full fine-tune, or of an adapter (``adapter``: the base frozen in
    ``adapter.base_bytes``, no gradients or optimizer state for it; the adapter's fp32 weights, gradients and
    optimizer state; the frozen-base FLOPs) — pure: pass the numbers, get the estimate. ``model``: the sizes
    read from the chosen model (default: the real ones); ``measured``: a calibrated speed for this GPU."""
    model = model or real_model_size(arch)
    p = model.params
    half = 2 if mixed_precision != "no" else 4
    wbytes = 2 if full_half else 4
    gb = 1e9
    if adapter is None:
        trained = p["unet"] + (p.get("te1", 0) if train_te1 else 0) + (p.get("te2", 0) if train_te2 else 0)
        frozen_te = (0 if train_te1 else p.get("te1", 0)) + (0 if train_te2 else p.get("te2", 0))
        base = trained * wbytes + frozen_te * half
    else:  # the whole base frozen (int8 U-Net where asked), the adapter trains in fp32
        trained, wbytes = adapter.params, 4
        base = p["unet"] * (1 if adapter.int8_unet else adapter.base_bytes) + \
            (p.get("te1", 0) + p.get("te2", 0)) * adapter.base_bytes + trained * wbytes
    native_flops, native_res = model.train_flops, model.native_res
    if adapter is not None:
        frozen = model.frozen_train_flops or native_flops * 0.703
        native_flops = native_flops if adapter.rebuilds_weight else frozen
    scale = (resolution / native_res) ** 2
    act_no_ckpt, act_ckpt = model.activation_gb
    parts = {
        "weights": (base + p["vae"] * (4 if vae_fp32 else 2)) / gb,
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
        flops += model.train_flops * scale ** 1.1 / 3  # one extra forward (a third of a full fine-tune's fwd+bwd)
    if not cached_latents:
        flops += VAE_ENCODE_FLOPS_1024 * (resolution / 1024) ** 2
    peak = gpu_peak_tflops(gpu_name) if gpu_name else None
    ips = peak * 1e12 * MFU / flops if peak else None
    speed_source = f"FLOP model: {peak:g} TFLOPS peak at {MFU:.0%} use" if peak else ""
    if measured is not None:
        ips, speed_source = measured.images_per_s, measured.label
    hours = total_images / ips / 3600 if ips else None
    cost = hours * price_per_hour if hours is not None and price_per_hour else None
    fits = None if vram_gb is None else vram <= vram_gb * 0.95
    if fits is False and adapter is not None:
        tips = ([] if gradient_checkpointing else ["gradient checkpointing"]) + \
            (["a smaller batch"] if batch_size > 1 else []) + \
            (["network.base_int8 (8-bit U-Net)"] if not adapter.int8_unet else []) + \
            (["a lower network.dim or a larger LoKr factor"]) + ([] if optimizer != "AdamW" else ["AdamW8bit"])
        notes.append(f"does not fit in {vram_gb:.0f} GB: try " + ", ".join(tips))
    elif fits is False:
        tips = ([] if optimizer != "AdamW" else ["AdamW8bit"]) + \
            ([] if gradient_checkpointing else ["gradient checkpointing"]) + \
            (["a smaller batch"] if batch_size > 1 else []) + (["freezing text encoder 2"] if train_te2 else []) + \
            (["ema.device = 'cpu'"] if ema_on_gpu else []) + \
            ["Adafactor (fixed LR)"] * (optimizer != "Adafactor")
        notes.append(f"does not fit in {vram_gb:.0f} GB: try " + ", ".join(tips))
    if gpu_name and ips is None:
        notes.append(f"no peak-FLOPs figure for {gpu_name}: time not estimated (known: {', '.join(GPU_PEAK_TFLOPS)})")
    if mixed_precision == "fp16" and full_half:
        notes.append("full fp16 needs AdamW8bit or it NaNs (the guide's experience)")
    return Estimate(round(vram, 1), {k: round(v, 1) for k, v in parts.items()}, ips, total_images,
                    hours, cost, fits, notes, speed_source, model.source, dict(p), trained)


def count_unet_train_flops(unet_config: dict, resolution: int, tokens: int = 77, frozen: bool = False) -> float:
    """FLOPs of one U-Net forward + backward for one image, counted on the meta device with torch's
    FlopCounterMode (no memory, seconds for SDXL; SDPA counted; FLOP = 2·MAC). ``frozen``: the weights take no
    gradient and the input does (an adapter step: every layer's input gradient, no weight gradients)."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        unet.requires_grad_(not frozen)
        lat = resolution // 8
        x = torch.randn(1, unet_config.get("in_channels", 4), lat, lat, requires_grad=frozen)
        t = torch.tensor([500])
        ctx = torch.randn(1, tokens, unet_config.get("cross_attention_dim", 768))
        extra = {}
        if unet_config.get("addition_embed_type") == "text_time":  # SDXL: pooled text + 6 size numbers
            pooled = unet_config["projection_class_embeddings_input_dim"] - 6 * unet_config["addition_time_embed_dim"]
            extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pooled), "time_ids": torch.randn(1, 6)}}
    with FlopCounterMode(display=False) as counter:
        unet(x, t, encoder_hidden_states=ctx, **extra).sample.sum().backward()
    return float(counter.get_total_flops())


def read_model_size(base_model: str, models_dir: Path | None, resolution: int | None = None) -> ModelSize:
    """Sizes of the chosen model from its file headers (no weights read); raises OSError/ValueError when it
    cannot be read here (a Hub id not downloaded yet, a pickle file, a damaged file). A U-Net of another size
    than the real one has its FLOPs counted at ``resolution`` (default: the native one)."""
    from helpers.models import open_checkpoint
    from helpers.models.checkpoint import summarize_checkpoint
    from helpers.models.loader import component_config
    from helpers.training.components import resolve_base_model

    if not base_model:
        raise ValueError("no base model chosen yet")
    path = Path(resolve_base_model(base_model, models_dir))
    if not path.exists():
        raise FileNotFoundError(f"{base_model} is not on this machine")
    with open_checkpoint(path) as ck:
        summary, unet_config = summarize_checkpoint(ck), component_config(ck, "unet")
        arch = ck.arch
    params = {c: int(info["parameters"]) for c, info in summary["components"].items()}
    real = real_model_size(arch)
    res, flops, frozen = real.native_res, real.train_flops, real.frozen_train_flops  # counted already
    if not math.isclose(params.get("unet", 0), real.params["unet"], rel_tol=0.005):
        # another size (a tiny test model, a distilled U-Net): count its own where it trains, and scale the
        # activation memory by its FLOPs against the real U-Net's there
        res = resolution or real.native_res
        flops = count_unet_train_flops(unet_config, res)
        frozen = count_unet_train_flops(unet_config, res, frozen=True)
    pixels = (res / real.native_res) ** 2
    ratio = flops / (real.train_flops * pixels ** 1.1)  # the estimate's own scaling of the real U-Net's FLOPs
    activations = (real.activation_gb[0] * ratio * pixels, real.activation_gb[1] * ratio * pixels)
    total = sum(params.values())
    return ModelSize(arch, params, flops, res, activations,
                     f"read from {path.name} ({total / 1e9:.3g} B parameters)" if total >= 1e8 else
                     f"read from {path.name} ({total / 1e6:.3g} M parameters)", frozen)


def model_size_for(base_model: str, models_dir: Path | None, arch: str, resolution: int | None = None) -> ModelSize:
    """``read_model_size``, or the real sizes of ``arch`` with the reason the model could not be read."""
    try:
        return read_model_size(base_model, models_dir, resolution)
    except Exception as exc:  # unreadable for any reason: the estimate still answers, and says why
        real = real_model_size(arch)
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        return ModelSize(**{**real.__dict__, "source": f"{real.source} ({reason})"})


def state_gb(trained_params: int, optimizer: str, full_half: bool, ema: bool) -> float:
    """One training state on disk: trained weights (their dtype), optimizer state, the fp32 EMA copy."""
    wbytes = 2 if full_half else 4
    return trained_params * (wbytes + optimizer_bytes_per_param(optimizer, wbytes) + (4 if ema else 0)) / 1e9


def estimate_disk(*, params: dict[str, int], trained_params: int, optimizer: str, full_half: bool,
                  save_precision: str, model_saves: int, keep_last: int, twin_files: bool, ema: bool,
                  state_saves: bool, keep_last_states: int, cached_latent_images: int, resolution: int
                  ) -> dict[str, float]:
    """GB a run leaves on disk at its fullest: model files kept (periodic ones + the final), training states
    (one more than kept while the next is written: the old one goes only after the new one is complete), and
    the latent cache on disk (fp32, 4 channels at 1/8 resolution)."""
    model_file = sum(params.values()) * (4 if save_precision == "fp32" else 2) / 1e9
    kept = model_saves if keep_last == 0 else min(keep_last, model_saves)
    return {"checkpoints": round((kept + 1) * (2 if twin_files else 1) * model_file, 2),
            "states": round((keep_last_states + 1) * state_gb(trained_params, optimizer, full_half, ema), 2)
            if state_saves else 0.0,
            "latent_cache": round(cached_latent_images * 4 * (resolution // 8) ** 2 * 4 / 1e9, 2)}


def run_settings(cfg, arch: str) -> dict:
    """What a speed measurement must match (``training.calibration``), from a TrainConfig."""
    network = getattr(cfg, "network", None)  # adapter training (LoRA/LyCORIS) when its section is on
    mode = network.algo if network is not None and getattr(network, "enabled", False) else "full"
    return {"arch": arch, "resolution": cfg.data.resolution, "mode": mode, "batch_size": cfg.batch_size,
            "gradient_checkpointing": cfg.precision.gradient_checkpointing,
            "cached_latents": cfg.data.cache_latents != "off", "train_text_encoder": cfg.optimizer.train_text_encoder,
            "optimizer": cfg.optimizer.optimizer, "mixed_precision": cfg.precision.mixed_precision,
            "ema": cfg.ema.enabled}


def count_training_images(dataset_root, default_repeats: int, epochs: int, caption_extension: str = ".txt",
                          exclude=()) -> int:
    """Images seen over the run: images × folder repeats × epochs (kohya N_name folders counted), without the
    ones held out for validation (``exclude``)."""
    from helpers.training.data import scan_dataset

    items, _report = scan_dataset(dataset_root, caption_extension=caption_extension,
                                  default_repeats=default_repeats, exclude=frozenset(exclude))
    return epochs * sum(item.repeats for item in items)


def detect_gpu() -> tuple[str | None, float | None]:
    """This machine's first CUDA GPU: name and memory in GiB, or (None, None)."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    props = torch.cuda.get_device_properties(0)
    return props.name, props.total_memory / 2**30


def trained_text_encoders(cfg, arch: str) -> tuple[bool, bool]:
    """Whether text encoder 1 / 2 train (a text encoder whose learning rate is 0 stays frozen)."""
    o = cfg.optimizer
    te1 = o.train_text_encoder and (o.learning_rate_te1 if o.learning_rate_te1 is not None else o.learning_rate) > 0
    te2 = arch == "sdxl" and o.train_text_encoder and \
        (o.learning_rate_te2 if o.learning_rate_te2 is not None else o.learning_rate) > 0
    return te1, te2


def adapter_plan(cfg, arch: str, unet_config: dict | None = None) -> AdapterPlan | None:
    """The adapter a config trains (None for a full fine-tune): its parameters counted on the meta device
    (``training.adapter_size``), its algorithm and the frozen base's precision."""
    network = getattr(cfg, "network", None)
    if network is None or not network.enabled:
        return None
    from helpers.training.adapter_size import adapter_parameter_count

    params = sum(adapter_parameter_count(network, arch, unet_config).values())
    return AdapterPlan(params, network.algo, BASE_BYTES[network.base_precision], network.base_int8,
                       network.dora or network.algo == "full")


def estimate_config(cfg, ws, gpu_name: str | None = None, vram_gb: float | None = None,
                    price_per_hour: float | None = None, arch: str | None = None, gpus: int = 1,
                    total_images: int | None = None) -> Estimate:
    """The estimate for a TrainConfig on this workspace's dataset and base model (GPU taken from torch when not
    given; ``gpus`` share the images, data parallel)."""
    from helpers.training.loop import resolve_dataset

    if gpu_name is None:
        gpu_name, vram_gb = detect_gpu()
    models_dir = ws.models if ws else None
    guess = arch or (cfg.model.arch if cfg.model.arch != "auto" else "sdxl")
    model = model_size_for(cfg.model.base_model, models_dir, guess, cfg.data.resolution)
    arch = model.arch
    o, d, pr = cfg.optimizer, cfg.data, cfg.precision
    te1, te2 = trained_text_encoders(cfg, arch)
    adapter = adapter_plan(cfg, arch, _unet_config(cfg.model.base_model, models_dir, model))
    if total_images is None:
        from helpers.training.validation import held_out_of

        root = resolve_dataset(d.dataset, models_dir)
        held_out = held_out_of(cfg, root)
        total_images = count_training_images(root, d.repeats, cfg.epochs, d.caption_extension, held_out)
    if cfg.max_steps:
        total_images = min(total_images, cfg.max_steps * cfg.batch_size * o.gradient_accumulation_steps * gpus)
    est = estimate_run(arch=arch, resolution=d.resolution, batch_size=cfg.batch_size,
                       total_images=math.ceil(total_images / gpus),  # each GPU trains on its share
                       optimizer=o.optimizer, train_te1=te1, train_te2=te2, mixed_precision=pr.mixed_precision,
                       full_half=pr.full_half_precision, gradient_checkpointing=pr.gradient_checkpointing,
                       vae_fp32=pr.vae_precision == "fp32", cached_latents=d.cache_latents != "off",
                       gpu_name=gpu_name, vram_gb=vram_gb, price_per_hour=price_per_hour,
                       ema_on_gpu=cfg.ema.enabled and cfg.ema.device != "cpu", model=model,
                       measured=find_measured_speed(gpu_name, run_settings(cfg, arch)), adapter=adapter)
    est.total_images = total_images
    return est


def _unet_config(base_model: str, models_dir: Path | None, model: ModelSize) -> dict | None:
    """The chosen model's U-Net config when it is not the real one (a tiny or distilled U-Net), else None."""
    if model.source.startswith("the real"):
        return None
    try:
        from helpers.models import open_checkpoint
        from helpers.models.loader import component_config
        from helpers.training.components import resolve_base_model

        with open_checkpoint(Path(resolve_base_model(base_model, models_dir))) as ck:
            return dict(component_config(ck, "unet"))
    except Exception:  # unreadable: the real architecture's count
        return None
