"""Images from a loaded SDXL / SD 1.5 model: the one place that builds diffusers pipelines.

Owns ``ImageSettings`` (an A1111 txt2img request), ``ImageGenerator`` (a pipeline over the models of a
``helpers.models.ModelBundle``, loaded from a file or held by a training run: the same modules, never a copy)
and ``GeneratedImage``. Sampling is diffusers' ``StableDiffusion[XL]Pipeline`` up to the final latents; decoding
is done here, one image at a time (the VAE's peak memory is per image), with an fp16 VAE that returns NaN
retried in fp32 (A1111's "revert VAE to 32-bit"). Noise comes from one CPU generator per image, seeded
``seed, seed+1, …`` across a batch as A1111 does, so an image depends on its seed only, not on the device or on
what else is in its batch. Rescaled CFG is diffusers' ``guidance_rescale`` (Lin et al. 2023, §3.4, φ = 0.7).

Clip skip uses A1111's numbering (1 = last CLIP layer). SD 1.5 honours it; SDXL always conditions on the
penultimate layer, so 1 and 2 mean the same there (as in A1111) and higher values are refused.
"""

from __future__ import annotations

import gc
import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from helpers.config import option
from helpers.generation.long_prompts import long_prompt_embeds, token_count, too_long
from helpers.generation.loras import AppliedLoras, LoraSpec
from helpers.generation.parameters import GenerationParameters, format_parameters, save_png
from helpers.generation.samplers import find_sampler, make_scheduler
from helpers.models.prompt_chunks import MAX_TOKENS

log = logging.getLogger(__name__)


class GenerationError(RuntimeError):
    """Generation could not go on; the message says which setting to change."""


@dataclass
class ImageSettings:
    """One generation request, with A1111's names and meanings."""

    prompt: str = option("", help="what to draw", kind="multiline")
    negative_prompt: str = option("", help="what to avoid", kind="multiline")
    steps: int = option(25, min=1, max=1000, help="sampling steps")
    cfg: float = option(7.0, min=0.0, max=100.0, help="classifier-free guidance scale (CFG)")
    sampler: str = option("Euler a", help="Euler a, Euler, Heun, LMS, DPM2 a, DPM++ 2M, DPM++ 2M Karras, DDIM, "
                          "UniPC (kohya spellings work too)")
    seed: int = option(-1, min=-1, max=2**32 - 1, help="-1 = a random seed (the one used is recorded)")
    width: int = option(0, min=0, max=8192, help="0 = the model's native size")
    height: int = option(0, min=0, max=8192, help="0 = the model's native size")
    batch_size: int = option(1, min=1, max=64, help="images per prompt (seeds seed, seed+1, …)")
    clip_skip: int = option(1, min=1, max=12, help="A1111 numbering: 1 = last CLIP layer, 2 = penultimate "
                            "(SD 1.5; SDXL always uses the penultimate)", group="advanced")
    rescale_cfg: float = option(0.0, min=0.0, max=1.0, help="rescaled CFG φ (0.7 for v-prediction / zero-SNR "
                                "models; 0 = off)", group="advanced")


@dataclass
class GeneratedImage:
    """One image and what made it."""

    image: object  # PIL.Image.Image
    parameters: GenerationParameters
    extra: dict = field(default_factory=dict)

    @property
    def infotext(self) -> str:
        return format_parameters(self.parameters)

    def save(self, path: str | Path) -> Path:
        """Write as PNG with the A1111 ``parameters`` chunk (atomically)."""
        return save_png(self.image, path, self.infotext)


def random_seed() -> int:
    """A fresh seed that leaves every global RNG alone (training's RNG state must not move)."""
    return random.SystemRandom().randrange(2**32)


def _dtype_of(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


class ImageGenerator:
    """Images from a ``ModelBundle``'s models, optionally with LoRA files applied (see module docstring).

    ``device`` is where sampling runs (default: where the U-Net is); ``offload="model"`` keeps each model on
    the CPU until it runs (diffusers' model CPU offload: slower, about a third of the VRAM).
    """

    def __init__(self, bundle, *, device: str | torch.device | None = None, model_name: str = "",
                 model_hash: str = "", zero_terminal_snr: bool = False, offload: str = "none"):
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        if offload not in ("none", "model"):
            raise ValueError(f"offload must be 'none' or 'model', got {offload!r}")
        self.bundle, self.arch, self.prediction = bundle, bundle.arch, bundle.prediction
        self.model_name, self.model_hash, self.zero_terminal_snr = model_name, model_hash, zero_terminal_snr
        self.device = torch.device(device) if device is not None else next(bundle.unet.parameters()).device
        self.loras: AppliedLoras | None = None
        self._scheduler_config = dict(bundle.noise_scheduler.config)
        scheduler = make_scheduler("Euler", self._scheduler_config, self.prediction)
        te = bundle.text_encoders
        if self.arch == "sdxl":
            self.pipe = StableDiffusionXLPipeline(vae=bundle.vae, text_encoder=te[0], text_encoder_2=te[1],
                                                  tokenizer=bundle.tokenizers[0], tokenizer_2=bundle.tokenizers[1],
                                                  unet=bundle.unet, scheduler=scheduler, add_watermarker=False)
        else:
            self.pipe = StableDiffusionPipeline(vae=bundle.vae, text_encoder=te[0], tokenizer=bundle.tokenizers[0],
                                                unet=bundle.unet, scheduler=scheduler, safety_checker=None,
                                                feature_extractor=None, requires_safety_checker=False)
        self.pipe.set_progress_bar_config(disable=True)
        self._force_zeros = self.arch == "sdxl" and bool(self.pipe.config.get("force_zeros_for_empty_prompt"))
        self.offload = offload
        if offload == "model":
            self.pipe.enable_model_cpu_offload(device=self.device)
        elif next(bundle.unet.parameters()).device != self.device:
            self.pipe.to(self.device)
        unet_cfg, vae_cfg = bundle.unet.config, bundle.vae.config
        self.latent_scale = 2 ** (len(vae_cfg.block_out_channels) - 1)
        self.native_size = int(unet_cfg.sample_size) * self.latent_scale
        self.size_multiple = self.latent_scale * 2 ** (len(unet_cfg.block_out_channels) - 1)

    # ------------------------------------------------------------ LoRAs
    def apply_loras(self, specs: list[LoraSpec], *, fused: bool = True) -> AppliedLoras | None:
        """Apply LoRA files (replacing any applied before); an empty list removes them."""
        self.remove_loras()
        if specs:
            models = {"unet": self.bundle.unet, "te1": self.bundle.text_encoders[0]}
            if self.arch == "sdxl":
                models["te2"] = self.bundle.text_encoders[1]
            self.loras = AppliedLoras(models, self.arch, specs, fused=fused, model_label=self.model_name or "the model")
        return self.loras

    def remove_loras(self) -> None:
        if self.loras is not None:
            self.loras.remove()
            self.loras = None

    # ------------------------------------------------------------ checks
    def resolve(self, settings: ImageSettings) -> ImageSettings:
        """Settings with defaults filled in (size, seed) and checked; errors name the setting."""
        s = replace(settings, width=settings.width or self.native_size, height=settings.height or self.native_size,
                    sampler=find_sampler(settings.sampler).name,
                    seed=settings.seed if settings.seed >= 0 else random_seed())
        for name in ("width", "height"):
            value = getattr(s, name)
            if value % self.size_multiple:
                lower = value - value % self.size_multiple
                raise GenerationError(f"{name} {value} is not a multiple of {self.size_multiple} for this model: use "
                                      f"{lower or self.size_multiple} or {lower + self.size_multiple}")
        if self.arch == "sdxl" and s.clip_skip > 2:
            raise GenerationError(f"clip_skip {s.clip_skip}: SDXL always uses the penultimate CLIP layer (clip skip "
                                  "1 and 2 are the same there); set clip_skip to 1")
        if not s.prompt.strip():
            raise GenerationError("the prompt is empty: write what to draw")
        if "<lora:" in s.prompt:
            raise GenerationError("LoRA tags in the prompt are not read here: pass LoRA files with loras=[…] "
                                  "(command line: --lora FILE[:STRENGTH])")
        return s

    # ------------------------------------------------------------ generation
    def generate(self, settings: ImageSettings, extra: dict[str, str] | None = None) -> list[GeneratedImage]:
        """``batch_size`` images for one prompt (seeds ``seed, seed+1, …``)."""
        s = self.resolve(settings)
        items = [replace(s, seed=s.seed + i, batch_size=1) for i in range(s.batch_size)]
        return self.generate_together(items, extra)

    def generate_together(self, items: list[ImageSettings], extra: dict[str, str] | None = None
                          ) -> list[GeneratedImage]:
        """One batch of images that share steps, CFG, sampler, size, clip skip and rescale (prompts, seeds vary)."""
        items = [self.resolve(i) for i in items]
        first = items[0]
        shared = ("steps", "cfg", "sampler", "width", "height", "clip_skip", "rescale_cfg")
        if any(getattr(i, k) != getattr(first, k) for i in items for k in shared):
            raise ValueError(f"images generated together must share {', '.join(shared)}")
        latents = self._sample(items)
        images = self._decode(latents)
        return [GeneratedImage(img, self._parameters(s, extra)) for img, s in zip(images, items, strict=True)]

    def _parameters(self, s: ImageSettings, extra: dict[str, str] | None) -> GenerationParameters:
        tags, hashes = self.loras.infotext() if self.loras else ([], {})
        return GenerationParameters(prompt=s.prompt, negative_prompt=s.negative_prompt, steps=s.steps,
                                    sampler=s.sampler, cfg=s.cfg, seed=s.seed, width=s.width, height=s.height,
                                    model=self.model_name, model_hash=self.model_hash, loras=tags, lora_hashes=hashes,
                                    clip_skip=s.clip_skip, rescale_cfg=s.rescale_cfg,
                                    zero_terminal_snr=self.zero_terminal_snr, extra=dict(extra or {}))

    def _autocast(self):
        """Autocast when the models hold different dtypes (training: fp32 U-Net, bf16 frozen text encoders)."""
        import contextlib

        dtypes = {_dtype_of(m) for m in [self.bundle.unet, *self.bundle.text_encoders]}
        low = [d for d in (torch.bfloat16, torch.float16) if d in dtypes]
        if len(dtypes) > 1 and low:
            return torch.autocast(self.device.type, dtype=low[0])
        return contextlib.nullcontext()

    def _sample(self, items: list[ImageSettings]) -> torch.Tensor:
        s = items[0]
        self.pipe.scheduler = make_scheduler(s.sampler, self._scheduler_config, self.prediction,
                                             zero_terminal_snr=self.zero_terminal_snr)
        negatives = [i.negative_prompt for i in items]
        prompts = [i.prompt for i in items]
        cut = too_long(self.bundle.tokenizers[0], [*prompts, *negatives])
        if cut:  # as the trainer cuts a caption at its token limit (and diffusers at 77): said, not fatal
            log.warning("a prompt of %d tokens is cut at %d (seven 75-token chunks): %.60s...",
                        token_count(self.bundle.tokenizers[0], cut[0]), MAX_TOKENS, cut[0])
        try:
            with torch.no_grad(), self._autocast():
                kwargs = long_prompt_embeds(self.arch, self.bundle.text_encoders, self.bundle.tokenizers, prompts,
                                            negatives, clip_skip=s.clip_skip,
                                            zeros_for_empty_negative=self._zeros_for_empty_negative(),
                                            # diffusers' own clip skip reads text_model.final_layer_norm, which
                                            # transformers 5 moved: SD 1.5 clip skip takes our encoder
                                            force=s.clip_skip > 1 and self.arch == "sd15")
            if kwargs is None:  # every text fits CLIP's 77 positions: diffusers encodes them itself
                kwargs = {"prompt": prompts,
                          "negative_prompt": negatives if any(n.strip() for n in negatives) else None}
            with self._autocast():
                out = self.pipe(**kwargs, num_inference_steps=s.steps, guidance_scale=s.cfg,
                                guidance_rescale=s.rescale_cfg, width=s.width, height=s.height, output_type="latent",
                                generator=[torch.Generator("cpu").manual_seed(i.seed) for i in items])
        except torch.OutOfMemoryError:
            self.free_cache()
            raise GenerationError(self._oom_message(len(items), s)) from None
        except RuntimeError as exc:  # the CPU allocator's way of running out
            if "can't allocate memory" not in str(exc):
                raise
            self.free_cache()
            raise GenerationError(self._oom_message(len(items), s).replace("GPU ", "")) from None
        return out.images

    def _zeros_for_empty_negative(self) -> bool:
        """SDXL's pipeline uses zero embeddings, not an encoded "", when there is no negative prompt."""
        return self._force_zeros

    def _oom_message(self, batch: int, s: ImageSettings) -> str:
        lower = f"lower batch_size (now {batch}) first, then " if batch > 1 else ""
        return (f"out of GPU memory generating {batch} image(s) at {s.width}x{s.height}: {lower}lower width/height, "
                "or load the model with offload='model' (command line: --offload model). Nothing was written.")

    def _decode(self, latents: torch.Tensor) -> list:
        """Latents -> PIL images, one at a time; an fp16 VAE that overflows (NaN) is retried in fp32."""
        from PIL import Image

        vae = self.pipe.vae
        cfg = vae.config
        images = []
        for latent in latents:
            z = latent[None].float()
            mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
            if mean is not None and std is not None:
                z = z * torch.tensor(std).view(1, -1, 1, 1).to(z) / cfg.scaling_factor + torch.tensor(mean).view(
                    1, -1, 1, 1).to(z)
            else:
                z = z / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
            try:
                pixels = self._run_vae(vae, z)
            except torch.OutOfMemoryError:
                self.free_cache()
                raise GenerationError("out of GPU memory decoding a latent with the VAE: lower width/height, or load "
                                      "with offload='model'. Nothing was written.") from None
            if not torch.isfinite(pixels).all():
                raise GenerationError("the image came out as NaN/inf (the model or its VAE overflowed): load it in "
                                      "bf16 or fp32 (dtype / vae_dtype), or lower the CFG scale")
            array = ((pixels[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            images.append(Image.fromarray(array.permute(1, 2, 0).cpu().numpy()))
        return images

    def _run_vae(self, vae, z: torch.Tensor) -> torch.Tensor:
        dtype = _dtype_of(vae)
        device = self.device  # with offload the VAE's hook moves it there for decode
        with torch.no_grad():
            pixels = vae.decode(z.to(device, dtype)).sample
            if dtype == torch.float16 and not torch.isfinite(pixels).all():
                vae.to(torch.float32)  # A1111's "revert VAE to 32-bit floats" on NaN
                try:
                    pixels = vae.decode(z.to(device, torch.float32)).sample
                finally:
                    vae.to(dtype)
        return pixels

    # ------------------------------------------------------------ memory
    def free_cache(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Remove LoRAs, drop the pipeline and give the memory back (the caller drops the bundle)."""
        self.remove_loras()
        self.pipe = None
        self.bundle = None
        self.free_cache()


# ---------------------------------------------------------------- from files


def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def open_generator(source: str | Path, *, loras: list[LoraSpec] = (), fused: bool = True, device: str = "auto",
                   dtype: str = "auto", vae_dtype: str = "auto", offload: str = "none",
                   zero_terminal_snr: bool | None = None, width: int = 0, height: int = 0, batch_size: int = 1,
                   models_dir: Path | None = None, tokenizers_from: str | Path | None = None,
                   echo=print) -> ImageGenerator:
    """Load a model (file, folder, Hub id, run folder or training state) for generation, LoRAs applied.

    Says what it picked and what it needs (``echo``) before loading; refuses to start when the device does not
    have the memory, naming what to lower. ``zero_terminal_snr=None`` reads it from the checkpoint's metadata
    (or the training state's config).
    """
    from helpers.generation.sources import (
        estimate_memory,
        find_model_source,
        load_for_generation,
        model_hash,
        native_size,
        open_source,
        pick_dtypes,
        trained_with_zero_terminal_snr,
    )

    found = find_model_source(source, models_dir)
    target = pick_device(device)
    load_device = torch.device("cpu") if offload == "model" else target
    with open_source(found) as ck:
        model_dtype, vae = pick_dtypes(target, ck.arch, dtype, vae_dtype)
        side = native_size(ck)
        if zero_terminal_snr is None:
            zero_terminal_snr = trained_with_zero_terminal_snr(found, ck)
        need = estimate_memory(ck, target, model_dtype, vae, width or side, height or side, batch_size,
                               offload=offload == "model")
    echo(f"model: {found.note}; {need.describe()}")
    if need.free_gb is not None and need.total_gb > need.free_gb:
        advice = "load with offload='model' (--offload model), " if offload == "none" and target.type == "cuda" else ""
        raise GenerationError(f"not enough memory on {target}: {need.describe()}. Free memory (close other "
                              f"kernels), {advice}or lower batch_size / width / height")
    bundle = load_for_generation(found, device=load_device, dtype=model_dtype, vae_dtype=vae,
                                 tokenizers_from=tokenizers_from)
    generator = ImageGenerator(bundle, device=target, model_name=found.label,
                               model_hash=model_hash(Path(found.path)) if found.state is None else "",
                               zero_terminal_snr=zero_terminal_snr, offload=offload)
    try:
        generator.apply_loras(list(loras), fused=fused)
    except Exception:
        generator.close()
        raise
    return generator
