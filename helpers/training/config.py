"""``TrainConfig``: one training run's settings, composed of the parts each module owns.

``DataConfig`` lives beside the data code, ``CaptionConfig`` beside the per-step captions, ``OptimizerConfig``
beside the optimizers, ``SaveConfig`` beside the checkpoint code, ``EmaConfig``, ``LoggingConfig`` and
``StageConfig`` beside theirs; this module adds the base model, the objective and precision sections and the
run-level numbers (epochs, batch size, seed), and the cross-field checks a form shows before anything runs
(none of them loads a model).
A run folder keeps its ``config.toml``; templates in ``templates/`` hold only what differs from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from helpers.config import option
from helpers.generation.training_samples import SamplingConfig
from helpers.training.captions import CaptionConfig
from helpers.training.checkpoints import SaveConfig
from helpers.training.data import DataConfig
from helpers.training.ema import EmaConfig
from helpers.training.network import NetworkConfig
from helpers.training.optim import OptimizerConfig
from helpers.training.schedules import StageConfig, stage_problems
from helpers.training.te_cache import cache_problems
from helpers.training.trackers import LoggingConfig
from helpers.training.validation import ValidationConfig, dataset_image_count

MOVED_TO_CAPTIONS = ("shuffle_caption", "keep_tokens", "caption_separator", "tag_dropout", "caption_dropout")


@dataclass
class ModelConfig:
    """The model to start from."""

    base_model: str = option("", help="a single .safetensors file, a diffusers folder, a Hub repo id, or the name "
                             "of a model in the workspace", kind="path")
    arch: Literal["auto", "sdxl", "sd15"] = option("auto", help="model family (auto = read it from the file)")
    prediction: Literal["auto", "epsilon", "v_prediction"] = option(
        "auto", help="what the model predicts (auto = from the file; most SDXL/SD 1.5 models: epsilon)")
    allow_pickle: bool = option(False, help="allow .ckpt/.pt pickle files (they can run code: only for files "
                                "you trust)", group="advanced")


@dataclass
class ObjectiveConfig:
    """The diffusion loss (see ``helpers.training.objective``)."""

    min_snr_gamma: float = option(0.0, min=0.0, max=100.0, help="min-SNR-γ loss weighting (5 in the paper and "
                                  "the guide; 0 = off)")
    soft_min_snr: bool = option(False, help="the smooth variant of min-SNR-γ (hyperfusion)", group="advanced")
    debiased_estimation: bool = option(False, help="weight the loss by 1/√SNR (ε) or 1/(SNR + 1) (v)",
                                       group="advanced")
    zero_terminal_snr: bool = option(False, help="rescale the noise schedule so the last step is pure noise "
                                     "(Lin et al. 2023; needs a v-prediction model)")
    noise_offset: float = option(0.0, min=0.0, max=1.0, help="offset noise strength (0 = off; Kohaku: 0.0357)",
                                 group="advanced")
    noise_offset_random_strength: bool = option(False, help="offset strength drawn from U(0, noise_offset) "
                                                "each step", group="advanced")
    adaptive_noise_scale: float = option(0.0, min=0.0, max=1.0, help="add this × |latent mean| to the offset "
                                         "strength (needs noise_offset)", group="advanced")
    multires_noise_iterations: int = option(0, min=0, max=20, help="pyramid noise levels (6–10; the XL 5M "
                                            "style model: 8; 0 = off)", group="advanced")
    multires_noise_discount: float = option(0.3, min=0.0, max=1.0, help="weight of each coarser pyramid "
                                            "level (XL 5M style: 0.4)", group="advanced")
    ip_noise_gamma: float = option(0.0, min=0.0, max=1.0, help="input perturbation: extra noise in the "
                                   "input, not the target (~0.1; hyperfusion: 0.02)", group="advanced")
    ip_noise_gamma_random_strength: bool = option(False, help="input perturbation strength from U(0, γ) "
                                                  "each step", group="advanced")
    min_timestep: int = option(0, min=0, max=999, help="smallest timestep trained", group="advanced")
    max_timestep: int = option(1000, min=1, max=1000, help="timesteps below this are trained", group="advanced")
    timestep_sampling: Literal["uniform", "logit_normal"] = option(
        "uniform", help="how timesteps are drawn in the range: uniform (SD's own training) or logit-normal "
        "(favours the middle)", group="advanced")
    logit_mean: float = option(0.0, min=-10.0, max=10.0, help="logit-normal mean (< 0: less noise)",
                               group="advanced")
    logit_std: float = option(1.0, min=0.01, max=10.0, help="logit-normal standard deviation", group="advanced")
    loss_type: Literal["l2", "l1", "huber", "smooth_l1"] = option(
        "l2", help="l2 (MSE, standard); huber / smooth_l1 are robust to outlier images", group="advanced")
    huber_schedule: Literal["snr", "exponential", "constant"] = option(
        "snr", help="how the Huber threshold changes with the timestep", group="advanced")
    huber_c: float = option(0.1, min=1e-6, max=100.0, help="Huber threshold", group="advanced")
    huber_scale: float = option(1.0, min=1e-6, max=100.0, help="Huber threshold scale (exponential and "
                                "constant schedules)", group="advanced")

    def problems(self, prediction: str) -> dict[str, str]:
        """Field problems of this section (keys without the prefix); ``prediction`` is the model's setting."""
        out: dict[str, str] = {}
        if self.min_timestep >= self.max_timestep:
            out["min_timestep"] = "must be below max_timestep"
        if self.adaptive_noise_scale and not self.noise_offset:
            out["adaptive_noise_scale"] = "scales the offset noise: set noise_offset too"
        if self.noise_offset_random_strength and not self.noise_offset:
            out["noise_offset_random_strength"] = "draws the offset noise strength: set noise_offset too"
        if self.ip_noise_gamma_random_strength and not self.ip_noise_gamma:
            out["ip_noise_gamma_random_strength"] = "draws the input perturbation strength: set ip_noise_gamma too"
        if self.soft_min_snr and not self.min_snr_gamma:
            out["soft_min_snr"] = "is the soft form of min-SNR-γ: set min_snr_gamma (e.g. 5) too"
        if self.zero_terminal_snr and prediction == "epsilon":
            out["zero_terminal_snr"] = ("an epsilon model cannot learn the pure-noise step (its target equals "
                                        "its input there): set model.prediction = 'v_prediction' to train the "
                                        "model as v-prediction, or turn this off")
        return out


@dataclass
class PrecisionConfig:
    """Numeric precision and memory savers."""

    mixed_precision: Literal["no", "fp16", "bf16"] = option(
        "no", help="compute in half precision (fp16 needs loss scaling; bf16 on Ampere or newer)")
    full_half_precision: bool = option(False, help="keep the trained weights themselves in fp16/bf16 (kohya "
                                       "full_fp16/full_bf16): less memory, lower quality", group="advanced")
    vae_precision: Literal["fp32", "fp16", "bf16"] = option(
        "fp32", help="VAE precision; the SDXL VAE gives NaN/black images in fp16", group="advanced")
    gradient_checkpointing: bool = option(False, help="recompute activations in the backward pass: much less "
                                          "memory, ~30% slower")
    attention: Literal["sdpa", "default"] = option("sdpa", help="scaled-dot-product attention kernels (fast, "
                                                   "memory efficient)", group="advanced")


@dataclass
class TrainConfig:
    """A full fine-tune of SDXL or SD 1.5."""

    format_version: ClassVar[int] = 2

    model: ModelConfig = option(factory=ModelConfig, help="base model")
    data: DataConfig = option(factory=DataConfig, help="images and augmentation")
    captions: CaptionConfig = option(factory=CaptionConfig, help="captions per step and text encoding")
    optimizer: OptimizerConfig = option(factory=OptimizerConfig, help="optimizer and learning rate")
    objective: ObjectiveConfig = option(factory=ObjectiveConfig, help="loss")
    precision: PrecisionConfig = option(factory=PrecisionConfig, help="precision and memory")
    saving: SaveConfig = option(factory=SaveConfig, help="checkpoints and training state")
    ema: EmaConfig = option(factory=EmaConfig, help="exponential moving average of the weights")
    network: NetworkConfig = option(factory=NetworkConfig, help="adapter training (LoRA / LyCORIS) instead of "
                                    "a full fine-tune")
    logging: LoggingConfig = option(factory=LoggingConfig, help="TensorBoard and Weights & Biases")
    validation: ValidationConfig = option(factory=ValidationConfig, help="validation loss on held-out images")
    sampling: SamplingConfig = option(factory=SamplingConfig, help="sample images during training (kohya prompt "
                                      "syntax)")
    stages: list[StageConfig] = option(factory=list, help="multi-stage run: [[stages]] tables with epochs and "
                                       "what changes (resolution, learning rates); empty = one stage",
                                       group="advanced")
    epochs: int = option(10, min=1, max=100_000, help="passes over the dataset (with repeats)")
    max_steps: int = option(0, min=0, max=10_000_000, help="stop after this many optimizer steps (0 = epochs "
                            "decide)", group="advanced")
    batch_size: int = option(1, min=1, max=512, help="images per batch (per GPU)")
    seed: int = option(42, min=0, max=2**31 - 1, help="fixes data order, crops and noise: same seed, same run")
    device: str = option("auto", help="auto (CUDA when present), cuda, cuda:N or cpu", group="advanced")

    @staticmethod
    def migrate(data: dict, version: int) -> dict:
        """Format 1 -> 2: the caption options moved from [data] to their own [captions] section."""
        if version == 1:
            data = {**data, "data": dict(data.get("data", {})), "captions": dict(data.get("captions", {}))}
            for key in MOVED_TO_CAPTIONS:
                if key in data["data"]:
                    data["captions"][key] = data["data"].pop(key)
        return data

    def check(self) -> dict[str, str]:
        """Problems between fields that would waste GPU time or produce NaNs."""
        problems: dict[str, str] = {}
        d, p, o = self.data, self.precision, self.optimizer
        if not self.model.base_model:
            problems["model.base_model"] = "choose a base model (file, diffusers folder, Hub id or workspace name)"
        if not d.dataset:
            problems["data.dataset"] = "choose a dataset folder"
        if d.resolution % d.bucket_step:
            problems["data.resolution"] = (f"{d.resolution} is not divisible by the bucket step {d.bucket_step}: "
                                           f"use {d.resolution - d.resolution % d.bucket_step} or "
                                           f"{d.resolution - d.resolution % d.bucket_step + d.bucket_step}")
        if d.min_bucket_side > d.max_bucket_side:
            problems["data.min_bucket_side"] = "must not exceed max_bucket_side"
        if d.cache_latents != "off" and d.random_crop:
            problems["data.cache_latents"] = ("a cached latent has one fixed crop: turn off random_crop or the "
                                              "latent cache")
        if d.cache_latents != "off" and (d.color_jitter or d.hue_jitter):
            problems["data.cache_latents"] = ("a cached latent has fixed colours: turn off color_jitter and "
                                              "hue_jitter, or the latent cache")
        if self.captions.clip_skip != 1 and self.model.arch == "sdxl":
            problems["captions.clip_skip"] = "clip skip is for SD 1.5 (SDXL already reads the penultimate layer): use 1"
        if p.vae_precision == "fp16" and self.model.arch != "sd15":
            problems["precision.vae_precision"] = ("the SDXL VAE overflows in fp16 (NaN latents, black images): "
                                                   "use fp32 (or bf16)")
        if p.full_half_precision and p.mixed_precision == "no":
            problems["precision.full_half_precision"] = "needs mixed_precision fp16 or bf16"
        problems.update(cache_problems(self))  # the text-encoder cache: frozen encoders, fixed captions only
        for section, found in (("optimizer", o.problems()), ("captions", self.captions.problems()),
                               ("objective", self.objective.problems(self.model.prediction)),
                               ("sampling", self.sampling.problems()),
                               ("validation", self.validation.problems(dataset_image_count(self.validation, d)))):
            problems.update({f"{section}.{key}": message for key, message in found.items()})
        problems.update({f"network.{key}": message for key, message in
                         self.network.problems(None if self.model.arch == "auto" else self.model.arch).items()})
        if self.network.enabled and p.full_half_precision:
            problems["precision.full_half_precision"] = ("is for full fine-tunes: an adapter trains in fp32 over a "
                                                         "frozen base in network.base_precision; turn it off")
        n = self.network
        if n.enabled and p.mixed_precision in ("fp16", "bf16") and n.base_precision not in (p.mixed_precision, "fp32"):
            problems["network.base_precision"] = (f"{n.base_precision} base under {p.mixed_precision} autocast converts "
                                                  f"every layer's weights: use {p.mixed_precision!r} (or set "
                                                  f"precision.mixed_precision = {n.base_precision!r})")
        if self.network.enabled and o.train_text_encoder:
            problems["optimizer.train_text_encoder"] = ("trains the whole text encoders; with an adapter use "
                                                        "network.train_text_encoder instead")
        trained = {"unet"} | ({f"te{i}" for i, lr in ((1, o.learning_rate_te1), (2, o.learning_rate_te2))
                               if lr != 0} if o.train_text_encoder else set())
        if self.network.enabled:  # an adapter's text-encoder modules train with network.train_text_encoder
            trained = {"unet"} | ({"te1", "te2"} if self.network.train_text_encoder else set())
        problems.update(stage_problems(self.stages, epochs=self.epochs, bucket_step=d.bucket_step,
                                       trained_groups=trained))
        return problems
