"""The training loop, top to bottom: set up, then optimizer steps until the planned number is done.

Everything else sits behind named calls: data (``training.data``), the loss (``training.objective`` via
``compute_loss``), models and families (``training.components``), saving and resuming
(``training.checkpoints``), logging (``training.progress``). One process per GPU under ``accelerate launch``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from helpers.config import to_dict
from helpers.generation.training_samples import TrainingSamples
from helpers.training import checkpoints as ckpt
from helpers.training import interrupt
from helpers.training import launch as modes  # data parallel, ZeRO-2, FSDP: what differs between them
from helpers.training import objective as obj
from helpers.training.components import (
    DTYPES,
    choose_trained_models,
    encode_pixels,
    load_base_model,
    model_family,
    prepare_models,
    resolve_base_model,
    save_model_file,
    weights_fingerprint,
)
from helpers.training.config import TrainConfig
from helpers.training.data import build_training_data, seed_for
from helpers.training.ema import ExponentialMovingAverage
from helpers.training.network import adapter_models, check_base_model, learning_rates, step_random_state
from helpers.training.optim import build_optimizer, effective_learning_rates
from helpers.training.progress import RunMonitor, peak_memory_gb
from helpers.training.schedules import LearningRateSchedule, RunPlan, StageConfig, stage_learning_rates
from helpers.training.te_cache import build_text_encoder_cache
from helpers.training.trackers import open_trackers
from helpers.training.validation import build_validation_set, held_out_of, validation_folder
from helpers.workspace import RunPaths


class TrainingError(RuntimeError):
    """Training stopped for a reason the user can act on (the message says what to do)."""


@dataclass
class Position:
    """Where a run is: optimizer steps done, current epoch, batches of it already consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def train(cfg: TrainConfig, run_root: Path, *, resume: str | None = None, models_dir: Path | None = None,
          cache_dir: Path | None = None, show_progress: bool | None = None) -> dict:
    """Train ``cfg`` into ``run_root``; ``resume`` = "latest" or a state folder. Returns a summary."""
    # unused parameters: SDXL TE1's last layer; adapter layers skipped by module dropout
    accelerator = start_accelerator(cfg.precision.mixed_precision, cfg.device, cfg.optimizer.train_text_encoder
                                    or cfg.network.train_text_encoder or cfg.network.module_dropout > 0)
    monitor = RunMonitor(RunPaths(Path(run_root)), enabled=accelerator.is_main_process, show_bar=show_progress)
    if accelerator.is_main_process:
        monitor.trackers, warnings = open_trackers(cfg.logging.tensorboard, cfg.logging.wandb,
                                                   cfg.logging.wandb_project, Path(run_root), to_dict(cfg))
        for message in warnings:
            monitor.event("warning", message=message)
    try:
        return run_training(cfg, Path(run_root), accelerator, monitor, resume, models_dir, cache_dir)
    except interrupt.StopRequested as exc:  # a stop before the first step: nothing trained, nothing to save
        monitor.event("stopped", reason=str(exc), step=0)
        monitor.update(force=True, state="stopped")
        raise
    except BaseException as exc:
        monitor.event("failed", error=f"{type(exc).__name__}: {exc}")
        monitor.update(force=True, state="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        monitor.close()


def run_training(cfg, run_root, accelerator, monitor, resume, models_dir, cache_dir) -> dict:
    p, o, device = cfg.precision, cfg.optimizer, accelerator.device
    run = RunPaths(run_root)  # every file of the run is named there
    if not resume and ckpt.find_latest_state(run.state):
        raise TrainingError(f"{run_root} already holds training state from an earlier start: continue it with "
                            "--resume latest, or train into a new run folder (nothing was overwritten)")
    if (unsupported := modes.unsupported_mode(accelerator, cfg)) is not None:  # FSDP; what ZeRO-2 cannot train
        raise TrainingError(unsupported)
    torch.manual_seed(cfg.seed)
    root = resolve_dataset(cfg.data.dataset, models_dir)  # a held-out slice too small stops here, before loading
    held_out = held_out_of(cfg, root)
    val_folder = validation_folder(cfg.validation, lambda name: resolve_dataset(name, models_dir))
    # samples drawn during training (main process only); a bad prompt line stops the run here, not hours in
    samples = TrainingSamples(cfg.sampling, run.samples, resolution=cfg.data.resolution, run_name=run.name,
                              enabled=accelerator.is_main_process, zero_terminal_snr=cfg.objective.zero_terminal_snr,
                              log_event=monitor.event, trackers=monitor.trackers)
    # 1. Load the base model; the family adapter hides SDXL/SD 1.5 differences from this loop
    monitor.update(force=True, state="loading")
    check_base_model(cfg.network, resolve_base_model(cfg.model.base_model, models_dir), cfg.model.allow_pickle)
    bundle = load_base_model(resolve_base_model(cfg.model.base_model, models_dir),
                             arch=None if cfg.model.arch == "auto" else cfg.model.arch,
                             prediction=None if cfg.model.prediction == "auto" else cfg.model.prediction,
                             allow_pickle=cfg.model.allow_pickle)
    check_model_settings(bundle.arch, p.vae_precision)
    family = model_family(bundle.arch, max_tokens=cfg.captions.max_token_length, clip_skip=cfg.captions.clip_skip)
    alphas_cumprod = noise_schedule(bundle.noise_scheduler.alphas_cumprod, cfg.objective.zero_terminal_snr,
                                    bundle.prediction, monitor).to(device)
    # 2. Choose what trains (text encoders with LR 0 stay frozen) and place every model
    #    (an adapter run: the base frozen in network.base_precision, only the lycoris modules train)
    if cfg.network.enabled:
        trained = adapter_models(bundle, cfg.network, base_lr=o.learning_rate, device=device,
                                 vae_dtype=DTYPES[p.vae_precision], gradient_checkpointing=p.gradient_checkpointing,
                                 attention=p.attention)
    else:
        trained = choose_trained_models(bundle, unet_lr=o.learning_rate, train_text_encoder=o.train_text_encoder,
                                        te_lrs=[o.learning_rate_te1, o.learning_rate_te2])
        weight_dtype = DTYPES[p.mixed_precision] if p.full_half_precision else torch.float32
        prepare_models(bundle, trained, device=device, weight_dtype=weight_dtype,
                       frozen_dtype=DTYPES[p.mixed_precision], vae_dtype=DTYPES[p.vae_precision],
                       gradient_checkpointing=p.gradient_checkpointing, attention=p.attention)
    # 3. Scan the dataset (bad files reported before any GPU time is spent), fill the latent cache; one
    #    data set per stage resolution, and the plan of where each stage starts
    #    (minus the images held out for the validation loss, which is computed on the main process)
    monitor.update(force=True, state="caching" if cfg.data.cache_latents != "off" else "loading")
    encode = functools.partial(encode_one, bundle.vae)
    stage_data = build_stage_data(cfg, root, accelerator, monitor, exclude=held_out, encode=encode,
                                  cache_folder=latent_cache_folder(cache_dir, bundle.vae))
    validation = build_validation_set(cfg, root, held_out, encode=encode, folder=val_folder) \
        if accelerator.is_main_process else None
    text_cache = build_text_encoder_cache(cfg, family, bundle, device, stage_data, cache_dir, monitor.show_bar)
    plan = plan_run(cfg, stage_data, list(trained.modules))
    total_steps = min(plan.total_steps, cfg.max_steps or sys.maxsize)
    # 4. Optimizer, LR schedule (per stage and model), EMA; accelerate adds DDP, autocast and loss scaling
    optimizer = build_optimizer(trained.parameter_groups(), o.optimizer, **o.optimizer_arguments())
    scheduler = LearningRateSchedule(optimizer, plan, o.lr_scheduler, warmup_steps=o.lr_warmup_steps,
                                     total_steps=total_steps, cycles=o.lr_cycles, power=o.lr_power,
                                     end_ratio=o.lr_end_ratio)
    names = list(trained.modules)
    modes.configure_zero2(accelerator, cfg.batch_size, o.max_grad_norm, p.mixed_precision)  # (DeepSpeed only)
    wrapped, optimizer = modes.prepare(accelerator, list(trained.modules.values()), optimizer)
    if p.full_half_precision and p.mixed_precision == "fp16":
        allow_fp16_gradients(accelerator)
    ema = start_ema(cfg.ema, trained.modules, device)
    # 5. Resume: weights, optimizer, schedule, EMA, RNGs and data position from the newest (or given) state
    position = Position()
    if resume:
        position = restore_training_state(resume, run.state, cfg, trained, optimizer, scheduler,
                                          accelerator, monitor, ema)
    monitor.event("resume" if resume else "start", step=position.step, total_steps=total_steps,
                  trained=names, device=str(device), processes=accelerator.num_processes)
    monitor.update(force=True, state="training", total_steps=total_steps, epochs=cfg.epochs, step=position.step)
    monitor.start_bar(total_steps, position.step)
    images_per_step = cfg.batch_size * o.gradient_accumulation_steps * accelerator.num_processes
    last_state_time, step_time, step_end = time.monotonic(), None, None
    modules = dict(zip(names, wrapped, strict=True))  # DDP-wrapped where training, so gradients synchronise
    settings = dict(family=family, unet=modules["unet"], vae=bundle.vae, tokenizers=bundle.tokenizers,
                    text_encoders=[modules.get(f"te{i + 1}", te) for i, te in enumerate(bundle.text_encoders)],
                    unet_dtype=bundle.unet.dtype, alphas_cumprod=alphas_cumprod, objective=cfg.objective,
                    prediction=bundle.prediction, train_text=len(names) > 1, text_cache=text_cache)
    samples.maybe_sample(bundle, position.step, position.epoch)  # step 0: the base model, for comparison
    validate = functools.partial(maybe_validate, validation, total_steps=total_steps, monitor=monitor, settings={
        **settings, "unet": bundle.unet, "text_encoders": bundle.text_encoders, "train_text": False},
        accelerator=accelerator, ema=ema)  # the unwrapped models: rank 0 alone computes it
    validate(position.step)
    # 6. Optimizer steps, epoch by epoch, from where the run stands (a stop signal now waits for a step's end)
    interrupt.begin_steps()
    while position.step < total_steps:
        data = stage_data[plan.stage_of_epoch(position.epoch)]
        batches = data.batches(position.epoch)
        remaining = batches[position.batch_in_epoch:]
        for chunk in step_chunks(data.loader(remaining), o.gradient_accumulation_steps):
            started, lrs = time.monotonic(), effective_learning_rates(optimizer)  # the LRs this step uses
            # forward + backward over the chunk's batches, then one clipped optimizer step, then the EMA
            with step_random_state(cfg.seed, position.step, device) if cfg.network.enabled else _nothing():
                loss = run_optimizer_step(chunk, accelerator, wrapped, optimizer, scheduler, o.max_grad_norm, settings)
            position = Position(position.step + 1, position.epoch, position.batch_in_epoch + len(chunk))
            if ema is not None:
                ema.update(position.step)
            # log: loss, LR, speed, memory, time left
            elapsed = time.monotonic() - started
            step_time = elapsed if step_time is None else 0.9 * step_time + 0.1 * elapsed
            monitor.step({"step": position.step, "epoch": position.epoch + 1, "loss": loss,
                          "lr": next(iter(lrs.values())), "lrs": lrs, "s_per_step": round(elapsed, 4),
                          "images_per_s": round(images_per_step / elapsed, 3),
                          "data_s": round(started - step_end, 4) if step_end else 0.0,  # waiting for the loader
                          "peak_memory_gb": round(peak_memory_gb(device), 3),
                          "eta_s": round(step_time * (total_steps - position.step), 1),
                          **({"ema_decay": ema.last_decay} if ema is not None else {})})
            # save a model file / resumable state when due
            if position.step < total_steps and ckpt.model_save_due(
                    position.step, None, every_n_epochs=0, every_n_steps=cfg.saving.save_every_n_steps):
                save_checkpoint(run_root, bundle, cfg, accelerator, monitor, position, ema, step=position.step)
            if ckpt.state_save_due(position.step, last_state_time, every_n_steps=cfg.saving.state_every_n_steps,
                                   every_n_minutes=cfg.saving.state_every_n_minutes):
                save_state(run_root, cfg, trained, optimizer, scheduler, accelerator, monitor, position, batches, ema)
                last_state_time = time.monotonic()
            # sample images when due (eval mode, training RNG untouched; the EMA weights when EMA is on)
            samples.maybe_sample(bundle, position.step, position.epoch, final=position.step >= total_steps,
                                 epoch_end=position.batch_in_epoch >= len(batches),
                                 weights=ema.swapped_into if ema is not None else None)
            validate(position.step)  # the held-out images' loss when due (same weights as the samples)
            if (signal_name := interrupt.stop_requested(accelerator)) is not None:
                return stop_cleanly(run_root, cfg, trained, optimizer, scheduler, accelerator, monitor, position,
                                    batches, ema, signal_name)
            if position.step >= total_steps:
                break
            step_end = time.monotonic()
        if position.batch_in_epoch >= len(batches):  # epoch finished: next one starts at its first batch
            position = Position(position.step, position.epoch + 1, 0)
            if position.step < total_steps and ckpt.model_save_due(
                    position.step, position.epoch, every_n_epochs=cfg.saving.save_every_n_epochs, every_n_steps=0):
                save_checkpoint(run_root, bundle, cfg, accelerator, monitor, position, ema, epoch=position.epoch)
    # 7. The final model file (the EMA weights when EMA is on)
    final = save_checkpoint(run_root, bundle, cfg, accelerator, monitor, position, ema, final=True)
    check_replicas(accelerator, optimizer, monitor)
    monitor.event("finished", step=position.step, path=str(final))
    monitor.update(force=True, state="finished", step=position.step)
    return {"final": str(final), "steps": position.step, "run": str(run_root)}


# ---------------------------------------------------------------- one step


def step_chunks(loader, size: int):
    """Consecutive groups of ``size`` batches (the last group of an epoch may be shorter)."""
    chunk = []
    for batch in loader:
        chunk.append(batch)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_optimizer_step(chunk, accelerator, wrapped, optimizer, scheduler, max_grad_norm, settings) -> float:
    """Accumulate gradients over the chunk's batches (synchronising only on the last), clip, step."""
    total = 0.0
    for index, batch in enumerate(chunk):
        last = index == len(chunk) - 1
        with modes.accumulating(accelerator, wrapped[0], last):  # gradients synchronise on the last batch only
            with modes.autocast(accelerator):
                loss = compute_loss(batch, **settings)
            accelerator.backward(loss / len(chunk))
        total += loss.item()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the scaler skipped this step
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if accelerator.num_processes > 1:  # log the mean over every GPU's batches, not rank 0's alone
        return accelerator.reduce(torch.tensor(total / len(chunk), device=accelerator.device), "mean").item()
    return total / len(chunk)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def compute_loss(batch, *, family, unet, vae, tokenizers, text_encoders, unet_dtype, alphas_cumprod, objective,
                 prediction, train_text, text_cache=None) -> torch.Tensor:
    """Latents -> noise at random timesteps -> U-Net prediction -> weighted (masked) loss to the target."""
    device = alphas_cumprod.device
    if "latents" in batch:
        latents = batch["latents"].to(device)
    else:
        latents = encode_pixels(vae, batch["pixels"], batch["seeds"])
    if not torch.isfinite(latents).all():
        raise TrainingError(explain_nonfinite("latents", vae.dtype))
    o, generator = objective, torch.Generator(device).manual_seed(seed_for(batch["seeds"][0], 2))
    timesteps = obj.sample_timesteps(len(latents), generator, o.min_timestep, o.max_timestep, o.timestep_sampling,
                                     o.logit_mean, o.logit_std)
    noise = obj.sample_noise(latents, generator, o.noise_offset,
                             offset_random_strength=o.noise_offset_random_strength,
                             adaptive_noise_scale=o.adaptive_noise_scale,
                             multires_iterations=o.multires_noise_iterations,
                             multires_discount=o.multires_noise_discount)
    return denoising_loss(batch, latents, noise, timesteps, family=family, unet=unet, vae=vae, tokenizers=tokenizers,
                          text_encoders=text_encoders, unet_dtype=unet_dtype, alphas_cumprod=alphas_cumprod,
                          objective=objective, prediction=prediction, train_text=train_text, text_cache=text_cache,
                          input_noise=obj.perturb_noise(noise, generator, o.ip_noise_gamma,
                                                        o.ip_noise_gamma_random_strength))


def denoising_loss(batch, latents, noise, timesteps, *, family, unet, vae, tokenizers, text_encoders, unet_dtype,
                   alphas_cumprod, objective, prediction, train_text, text_cache=None, input_noise=None
                   ) -> torch.Tensor:
    """The loss of denoising ``latents`` noised with ``noise`` (``input_noise`` in the input, when perturbed) at
    ``timesteps``: training's loss after its random draws, and the validation loss with fixed ones."""
    o, device = objective, alphas_cumprod.device
    noisy = obj.add_noise(latents, noise if input_noise is None else input_noise, timesteps, alphas_cumprod)
    if text_cache is not None:  # frozen encoders, fixed captions: encoded once (training.te_cache)
        text = text_cache.encode(batch["captions"])
    else:
        with torch.set_grad_enabled(train_text):
            text = family.encode_tokens(text_encoders, family.tokenize_captions(tokenizers, batch["captions"]))
    cond = family.unet_conditioning(text, batch["original_sizes"], batch["crop_top_lefts"], batch["target_sizes"],
                                    unet_dtype)
    pred = unet(noisy.to(unet_dtype), timesteps, **cond).sample
    target = obj.compute_target(prediction, latents, noise, timesteps, alphas_cumprod)
    weights = obj.loss_weights(obj.compute_snr(timesteps, alphas_cumprod), prediction, min_snr_gamma=o.min_snr_gamma,
                               soft_min_snr=o.soft_min_snr, debiased=o.debiased_estimation)
    huber_c = obj.huber_thresholds(timesteps, alphas_cumprod, o.huber_schedule, o.huber_c, o.huber_scale) \
        if o.loss_type in ("huber", "smooth_l1") else None
    mask = obj.latent_mask(batch["masks"].to(device), latents.shape[-2:]) if "masks" in batch else None
    loss = obj.diffusion_loss(pred, target, weights, loss_type=o.loss_type, huber_c=huber_c, mask=mask)
    if not torch.isfinite(loss):
        raise TrainingError(explain_nonfinite("loss", vae.dtype, unet_dtype))
    return loss


def explain_nonfinite(what: str, vae_dtype: torch.dtype, unet_dtype: torch.dtype | None = None) -> str:
    """The likely cause of a NaN/inf, in the order they happen in practice."""
    if what == "latents":
        return (f"the VAE produced NaN/inf latents (VAE in {vae_dtype}): set precision.vae_precision = 'fp32' "
                "(the SDXL VAE overflows in fp16); nothing was trained on them")
    causes = ["the learning rate is too high (try 10x lower)"]
    if unet_dtype == torch.float16:
        causes.insert(0, "full fp16 weights overflow (use bf16, or full_half_precision = false)")
    return ("the loss became NaN/inf, so training stopped instead of training on it. Likely: "
            + "; or ".join(causes) + ". Resume from the last state after changing the config.")


# ---------------------------------------------------------------- setup helpers


def start_accelerator(mixed_precision: str, device: str, find_unused: bool):
    """An ``accelerate.Accelerator`` (one process per GPU under ``accelerate launch``)."""
    import datetime

    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    cpu, group_options = modes.accelerator_options(device)  # DeepSpeed on a CPU: gloo, named
    if device.startswith("cuda:"):
        torch.cuda.set_device(int(device.split(":")[1]))
    # SDXL TE1's last layer is unused (penultimate output), so DDP must allow unused parameters
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=find_unused),
              # rank 0 draws samples and writes checkpoints while the others wait at their next collective:
              # give that more than the default 10 minutes before the process group gives up
              InitProcessGroupKwargs(timeout=datetime.timedelta(minutes=60), **group_options)]
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu, kwargs_handlers=kwargs)


def allow_fp16_gradients(accelerator) -> None:
    """Full fp16 keeps fp16 gradients, which torch's GradScaler refuses to unscale; allow it (as sd-scripts'
    ``patch_accelerator_for_fp16_training`` does)."""
    import functools

    scaler = accelerator.scaler
    scaler._unscale_grads_ = functools.partial(scaler._unscale_grads_, allow_fp16=True)


def noise_schedule(alphas_cumprod: torch.Tensor, zero_terminal_snr: bool, prediction: str, monitor) -> torch.Tensor:
    """The model's ᾱ, rescaled to zero terminal SNR when asked (with a warning for an epsilon model)."""
    if not zero_terminal_snr:
        return alphas_cumprod
    if prediction == "epsilon":
        message = ("objective.zero_terminal_snr with an epsilon model: it cannot learn the pure-noise step; set "
                   "model.prediction = 'v_prediction' to train it as v-prediction (Lin et al. 2023)")
        print(f"warning: {message}", file=sys.stderr)
        monitor.event("warning", message=message)
    return obj.rescale_zero_terminal_snr(alphas_cumprod)


def encode_one(vae, pixels: torch.Tensor, seed: int) -> torch.Tensor:
    return encode_pixels(vae, pixels, [seed])


def maybe_validate(validation, step: int, *, total_steps, monitor, settings, accelerator, ema) -> None:
    """The validation loss (``training.validation``) when due: the loop's ``denoising_loss`` at fixed draws."""
    if validation is None or not validation.due(step, total_steps):
        return
    device = settings["alphas_cumprod"].device

    def loss(batch, noise, timesteps):
        with modes.autocast(accelerator):
            return denoising_loss(batch, batch["latents"].to(device), noise, timesteps, **settings)

    started = time.monotonic()
    with ema.swapped_into() if ema is not None else _nothing():
        result = validation.loss(loss, [settings["unet"], *settings["text_encoders"]], device)
    monitor.validation(step, **result, seconds=round(time.monotonic() - started, 3))


def build_stage_data(cfg, root: Path, accelerator, monitor, *, cache_folder, encode, exclude=()) -> list:
    """One ``TrainingData`` per stage (stages at the same resolution share one), each scanned and cached now."""
    stages = cfg.stages or [StageConfig(epochs=cfg.epochs)]
    built: dict[int, object] = {}
    for stage in stages:
        resolution = stage.resolution or cfg.data.resolution
        if resolution not in built:
            data = build_training_data(dataclasses.replace(cfg.data, resolution=resolution), root,
                                       batch_size=cfg.batch_size, seed=cfg.seed, world_size=accelerator.num_processes,
                                       rank=accelerator.process_index, cache_folder=cache_folder, encode=encode,
                                       show_progress=monitor.show_bar, captions=cfg.captions, exclude=exclude)
            monitor.event("data", resolution=resolution, report=data.report.to_dict(), summary=data.report.summary())
            built[resolution] = data
    return [built[stage.resolution or cfg.data.resolution] for stage in stages]


def plan_run(cfg, stage_data: list, groups: list[str]) -> RunPlan:
    """Each stage's epochs, optimizer steps per epoch and base learning rate per trained model."""
    o = cfg.optimizer
    stages = cfg.stages or [StageConfig(epochs=cfg.epochs)]
    unet, te1, te2 = learning_rates(cfg.network, o.learning_rate, o.learning_rate_te1, o.learning_rate_te2)
    return RunPlan(epochs=[s.epochs for s in stages],
                   steps_per_epoch=[math.ceil(len(d.batches(0)) / o.gradient_accumulation_steps) for d in stage_data],
                   learning_rates=[stage_learning_rates(s, groups, unet=unet, te1=te1, te2=te2) for s in stages])


def start_ema(ema_cfg, modules: dict, device: torch.device) -> ExponentialMovingAverage | None:
    if not ema_cfg.enabled:
        return None
    return ExponentialMovingAverage(modules, decay=ema_cfg.decay, warmup=ema_cfg.warmup, power=ema_cfg.warmup_power,
                                    start_step=ema_cfg.start_step, update_every=ema_cfg.update_every,
                                    device="cpu" if ema_cfg.device == "cpu" else device)


def check_replicas(accelerator, optimizer, monitor) -> None:
    """Several processes: log each one's checksum of its trained weights (``training.launch``); a difference
    means the processes diverged (the file written is rank 0's) and is a warning."""
    if accelerator.num_processes < 2:
        return
    from helpers.training.launch import replica_checksums

    sums = replica_checksums(accelerator, modes.trained_parameters(accelerator, optimizer))
    monitor.event("replicas", processes=len(sums), checksums=[str(s) for s in sums], agree=len(set(sums)) == 1)
    if len(set(sums)) > 1:
        monitor.event("warning", message=f"the {len(sums)} processes ended with different weights: the saved file "
                      "is process 0's; report this with the run's log")


def check_model_settings(arch: str, vae_precision: str) -> None:
    if arch == "sdxl" and vae_precision == "fp16":
        raise TrainingError("the SDXL VAE overflows in fp16 (NaN latents, black images): set "
                            "precision.vae_precision = 'fp32'")


def resolve_dataset(name: str, models_dir: Path | None) -> Path:
    """A dataset folder, or a dataset name in the workspace beside ``models_dir``."""
    path = Path(name).expanduser()
    if not path.exists() and models_dir is not None and (models_dir.parent / "datasets" / name).exists():
        return models_dir.parent / "datasets" / name
    return path


def latent_cache_folder(cache_dir: Path | None, vae) -> Path | None:
    """``<cache>/latents/<VAE fingerprint>``: a different VAE never reuses another's latents."""
    if cache_dir is None:
        return None
    return Path(cache_dir) / "latents" / weights_fingerprint([vae])


# ---------------------------------------------------------------- saving and resuming


def save_checkpoint(run_root, bundle, cfg, accelerator, monitor, position, ema=None, *, epoch=None, step=None,
                    final=False) -> Path:
    """A single-file model now (main process), pruning older periodic ones. With EMA on the file holds the EMA
    weights (and ``-noema`` the trained ones, when ``ema.save_trained_too``)."""
    folder = RunPaths(run_root).checkpoints
    path = folder / ckpt.checkpoint_name(run_root.name, epoch=epoch, step=step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"tunebook.run": run_root.name, "tunebook.step": str(position.step),
                "tunebook.epoch": str(position.epoch), "tunebook.base_model": cfg.model.base_model,
                "tunebook.ema": str(ema is not None).lower(),
                # samplers must use the rescaled schedule too (ComfyUI's marker key is still to be written)
                "tunebook.zero_terminal_snr": str(cfg.objective.zero_terminal_snr).lower()}
        # an adapter run saves the adapter file (kohya/LyCORIS keys), not the whole model
        adapter = getattr(bundle, "adapter", None)
        save = adapter.save if adapter is not None else (
            lambda file, metadata: save_model_file(file, bundle, precision=cfg.saving.save_precision, metadata=metadata))
        with ema.swapped_into() if ema is not None else _nothing():
            save(path, metadata=meta)
        if ema is not None and cfg.ema.save_trained_too:
            save(folder / ckpt.checkpoint_name(run_root.name, epoch=epoch, step=step, noema=True),
                 metadata={**meta, "tunebook.ema": "false"})
        if not final:
            ckpt.prune_checkpoints(folder, run_root.name, cfg.saving.keep_last)
        monitor.event("checkpoint", path=str(path), step=position.step, epoch=position.epoch)
    accelerator.wait_for_everyone()
    return path


def save_state(run_root, cfg, trained, optimizer, scheduler, accelerator, monitor, position, batches,
               ema=None) -> None:
    """Resumable training state (main process writes; every process waits). A disk too small is a warning, not
    the end of the run: nothing is written, the previous state stays, the next due save tries again."""
    accelerator.wait_for_everyone()
    weights = modes.whole_weights(accelerator, trained)  # every process: under ZeRO-2 each holds a shard
    optimizer_state = modes.whole_optimizer_state(accelerator, optimizer)
    if accelerator.is_main_process:
        scaler = getattr(accelerator, "scaler", None)
        trainer = {"step": position.step, "epoch": position.epoch, "batch_in_epoch": position.batch_in_epoch,
                   "batches_in_epoch": len(batches), "config": to_dict(cfg), "saved_at": time.time(),
                   "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                   "rng": ckpt.capture_rng_states()}
        started = time.monotonic()
        try:
            path = ckpt.save_training_state(RunPaths(run_root).state, position.step, weights=weights,
                                            optimizer_state=optimizer_state, trainer=trainer,
                                            keep_last=cfg.saving.keep_last_states,
                                            ema_weights=ema.state_dict() if ema is not None else None)
        except ckpt.DiskSpaceShort as exc:
            print(f"warning: {exc}", file=sys.stderr)
            monitor.event("state_skipped", step=position.step, reason=str(exc))
            monitor.event("warning", message=str(exc))
        else:
            seconds, size = time.monotonic() - started, ckpt.folder_bytes(path)
            monitor.event("state", path=str(path), step=position.step, seconds=round(seconds, 2), bytes=size)
            for message in ckpt.state_save_warnings(path.parent, size, seconds, cfg.saving.state_every_n_minutes):
                monitor.event("warning", message=message)
    accelerator.wait_for_everyone()


def stop_cleanly(run_root, cfg, trained, optimizer, scheduler, accelerator, monitor, position, batches, ema,
                 signal_name: str) -> dict:
    """A stop signal between steps: state at this step (unless one was just written), then the end, resumable."""
    saved = [p.name for p in RunPaths(run_root).states()]
    if f"{ckpt.STATE_PREFIX}{position.step:08d}" not in saved:
        save_state(run_root, cfg, trained, optimizer, scheduler, accelerator, monitor, position, batches, ema)
    monitor.event("stopped", step=position.step, signal=signal_name)
    monitor.update(force=True, state="stopped", step=position.step)
    return {"final": None, "steps": position.step, "run": str(run_root), "stopped": signal_name}


def restore_training_state(resume, state_dir, cfg, trained, optimizer, scheduler, accelerator, monitor,
                           ema=None) -> Position:
    """Load a state into the models/optimizer/schedule/EMA and return where to continue; warn on config changes.

    Learning rates come from the current config (see ``training.schedules``): an edited LR is logged as a
    ``learning_rate_changed`` event and a warning."""
    path = ckpt.find_latest_state(state_dir) if resume == "latest" else Path(resume)
    if path is None:
        raise TrainingError(f"no training state in {state_dir} to resume from: start without --resume "
                            "(states are written every saving.state_every_n_steps steps)")
    state = ckpt.load_training_state(path)
    changed = [d for d in ckpt.config_differences(state["config"], to_dict(cfg))
               if not d.startswith(ckpt.RESUME_SAFE_KEYS)
               or (d.startswith(("epochs", "max_steps"))
                   and cfg.optimizer.lr_scheduler not in ("constant", "constant_with_warmup"))]
    if changed:
        message = ("resuming with changed settings, so the run will not match an uninterrupted one: "
                   + "; ".join(changed))
        print(f"warning: {message}", file=sys.stderr)
        monitor.event("warning", message=message)
    modes.load_whole_weights(accelerator, trained, state["weights"])  # under ZeRO-2 each process takes its shard
    modes.load_whole_optimizer_state(accelerator, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    report_learning_rate_changes(scheduler.changes_since(state["scheduler"]), state["step"], monitor)
    if ema is not None:
        if "ema" not in state:
            raise TrainingError(f"{path} holds no EMA (it was saved with ema.enabled off): resume with EMA off, "
                                "or start a new run with it on")
        ema.load_state_dict(state["ema"])
    if state.get("scaler") and getattr(accelerator, "scaler", None) is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    ckpt.restore_rng_states(state["rng"])
    monitor.update(force=True, last_state=str(path))
    return Position(state["step"], state["epoch"], state["batch_in_epoch"])


def report_learning_rate_changes(changes: dict[str, tuple[float, float]], step: int, monitor) -> None:
    """A resumed run with edited learning rates says so: one event with the numbers, one warning."""
    if not changes:
        return
    listed = "; ".join(f"{name} {old:g} -> {new:g}" for name, (old, new) in changes.items())
    message = (f"learning rates differ from the saved state ({listed}): the config's values apply from step "
               f"{step} on, the schedule's shape continues")
    print(f"warning: {message}", file=sys.stderr)
    monitor.event("learning_rate_changed", step=step, groups={k: list(v) for k, v in changes.items()})
    monitor.event("warning", message=message)
