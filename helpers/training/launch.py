"""Several GPUs, several machines: the ``accelerate launch`` command line a run needs, and the check that every
process ended with the same weights.

``launch_command`` builds ``python -m accelerate.commands.launch --multi_gpu --num_processes N ... -m
helpers.training RUN.toml ...`` (one process per GPU, data parallel; each process trains its share of every
epoch's batches, gradients are averaged). On a machine without CUDA the same command starts N CPU processes
that synchronise over gloo (how the tests run it). Across machines the same command runs on each, with
``--num_machines``, ``--machine_rank`` and the first machine's address (README: "Training on several
machines"). ``--fsdp`` adds the shipped accelerate FSDP config (``templates/accelerate/fsdp_sdxl.yaml``: a full
SDXL fine-tune sharded across 24-48 GB cards); accelerate's FSDP needs CUDA, so it is refused without a GPU
before anything starts, and the trainer itself stops at start under FSDP (``unsupported_mode``): its saves
do not gather sharded weights and optimizer state yet.

``--zero2`` adds the shipped DeepSpeed ZeRO stage 2 config (``templates/accelerate/deepspeed_zero2.yaml``):
optimizer state and gradients split over the processes, weights replicated, so model files are written as
without it. A training state stays in the one-process format: at each state save every process takes part in
gathering the optimizer state and the fp32 weights to rank 0 (``whole_optimizer_state``), and a resume scatters
them back (``load_whole_optimizer_state``), so ``--resume latest`` is exact and a state moves freely between
``--zero2``, ``--gpus N`` and one GPU. On a machine without CUDA the processes run DeepSpeed's CPU accelerator
over gloo (how the tests run it). Element-wise optimizers only (AdamW, ADOPT): the others see flat shards and
would compute something else (Adafactor factors 2-D weights, Prodigy sums over all of them). One difference
from data parallel remains: a trained weight that never gets a gradient (SDXL TE1's last layer, which SDXL
never reads) is part of a flat shard, so AdamW's weight decay still shrinks it; every other weight matches.

``replica_checksums`` is what the trainer logs at the end of a multi-process run: one integer per process over
the bits of every trained parameter (identical processes, identical numbers); a difference is a warning.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

FSDP_CONFIG = Path(__file__).resolve().parent.parent.parent / "templates" / "accelerate" / "fsdp_sdxl.yaml"
ZERO2_CONFIG = FSDP_CONFIG.with_name("deepspeed_zero2.yaml")
ZERO2_OPTIMIZERS = ("AdamW", "ADOPT")  # element-wise: a flat shard of the weights steps as the whole would
LAUNCHED_ENV = "LOCAL_RANK"  # set by accelerate / torchrun in each process they start


class LaunchError(ValueError):
    """A launch that cannot work here (the message says why and what to do)."""


def under_launcher() -> bool:
    """Whether this process was started by accelerate launch / torchrun (so it must not launch again)."""
    return LAUNCHED_ENV in os.environ


def launch_command(config_path: str | os.PathLike, gpus: int, *, trainer_args: list[str] | None = None,
                   fsdp: bool = False, zero2: bool = False, num_machines: int = 1, machine_rank: int = 0,
                   main_process_ip: str | None = None, main_process_port: int | None = None,
                   python: str = sys.executable) -> list[str]:
    """The command that trains ``config_path`` on ``gpus`` processes per machine (``gpus`` = 1 on one machine
    without FSDP: plain ``python -m helpers.training``)."""
    trainer = ["-m", "helpers.training", str(config_path), *(trainer_args or [])]
    if gpus < 1:
        raise LaunchError(f"--gpus {gpus}: use 1 or more (the number of GPUs on this machine)")
    if num_machines > 1 and not main_process_ip:
        raise LaunchError("--num-machines > 1 needs --main-process-ip: the address of machine rank 0, which every "
                          "machine can reach")
    if not 0 <= machine_rank < num_machines:
        raise LaunchError(f"--machine-rank {machine_rank}: use 0 .. {num_machines - 1} (0 on the first machine)")
    if fsdp and zero2:
        raise LaunchError("--fsdp and --zero2 are two ways to shard: choose one (--zero2 for a full fine-tune "
                          "whose weights fit each GPU, --fsdp where they do not)")
    if gpus == 1 and num_machines == 1 and not (fsdp or zero2):
        return [python, *trainer]
    cmd = [python, "-m", "accelerate.commands.launch"]
    if fsdp or zero2:
        cmd += ["--config_file", str(ZERO2_CONFIG if zero2 else FSDP_CONFIG)]
    else:
        cmd += ["--multi_gpu"]
    cmd += ["--num_processes", str(gpus * num_machines)]
    if num_machines > 1 or fsdp or zero2:
        cmd += ["--num_machines", str(num_machines), "--machine_rank", str(machine_rank)]
    if main_process_ip:
        cmd += ["--main_process_ip", main_process_ip, "--main_process_port", str(main_process_port or 29500)]
    return cmd + trainer


def check_launch(gpus: int, fsdp: bool, cuda_devices: int | None = None, zero2: bool = False) -> None:
    """Refuse what cannot run on this machine, before any process starts."""
    if zero2:
        try:
            import deepspeed  # noqa: F401
        except ImportError as exc:
            raise LaunchError(f"--zero2 needs DeepSpeed, which does not import here ({exc}): `pip install "
                              "deepspeed==0.19.8` (requirements.txt), or train without --zero2") from None
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count()
    if fsdp and cuda_devices == 0:
        raise LaunchError("--fsdp: accelerate's FSDP needs CUDA GPUs (on a CPU it stops with 'no available "
                          "devices'); train without --fsdp here (--gpus N runs N CPU processes over gloo), or on a "
                          "GPU machine")
    if cuda_devices and gpus > cuda_devices:
        raise LaunchError(f"--gpus {gpus}: this machine has {cuda_devices} CUDA GPU(s): use at most {cuda_devices}")


FSDP_NOT_READY = ("FSDP: this trainer's model-file and training-state saves read whole (unsharded) weights and "
                  "optimizer state, which FSDP keeps split across the GPUs; until they gather them, an FSDP run "
                  "would train and then fail at its first save. Train with --gpus N without --fsdp (data parallel), "
                  "--zero2 (optimizer state and gradients sharded, weights whole), or an adapter template (its "
                  "frozen base needs no sharding); nothing was loaded or written")


def unsupported_mode(accelerator, cfg=None) -> str | None:
    """Why the trainer must stop at start (before any model is loaded) under this distributed mode, or None."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return FSDP_NOT_READY
    if accelerator.distributed_type != DistributedType.DEEPSPEED or cfg is None:
        return None
    if (stage := accelerator.state.deepspeed_plugin.zero_stage) != 2:
        return (f"DeepSpeed ZeRO stage {stage}: this trainer runs stage 2 (templates/accelerate/"
                "deepspeed_zero2.yaml, --zero2); nothing was loaded or written")
    if cfg.optimizer.optimizer not in ZERO2_OPTIMIZERS:
        return (f"optimizer.optimizer = {cfg.optimizer.optimizer!r} under --zero2: each process steps a flat shard "
                f"of the weights, which only element-wise optimizers ({', '.join(ZERO2_OPTIMIZERS)}) step as the "
                "whole; choose one of them, or train without --zero2; nothing was loaded or written")
    if cfg.precision.mixed_precision == "fp16" or cfg.precision.full_half_precision:
        return ("precision under --zero2: DeepSpeed keeps fp32 master weights and casts to bf16 itself; set "
                "precision.mixed_precision = 'bf16' (or 'no') and full_half_precision = false, or train without "
                "--zero2; nothing was loaded or written")
    if cfg.network.enabled:
        return ("network under --zero2: ZeRO-2 shards a full fine-tune's optimizer state; an adapter's is small "
                "and its frozen base needs no sharding: train it with --gpus N without --zero2; nothing was "
                "loaded or written")
    return None


def zero2(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def deepspeed_launched() -> bool:
    """Whether ``accelerate launch`` started this process with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def accelerator_options(device: str) -> tuple[bool, dict]:
    """``(cpu, process-group options)`` for ``Accelerator``: under DeepSpeed without CUDA the processes must not
    be told cpu=True (accelerate would then not start DeepSpeed's process group) and need gloo named."""
    if not deepspeed_launched():
        return device == "cpu", {}
    import torch

    return False, ({} if torch.cuda.is_available() else {"backend": "gloo"})


def configure_zero2(accelerator, batch_size: int, max_grad_norm: float, mixed_precision: str) -> None:
    """Before ``prepare``: DeepSpeed's batch size per process and clipping from the run's config (the trainer
    accumulates itself, so DeepSpeed's accumulation stays 1; its clipping replaces ``clip_grad_norm_``)."""
    if not zero2(accelerator):
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config.update(train_micro_batch_size_per_gpu=batch_size, gradient_accumulation_steps=1,
                  gradient_clipping=float(max_grad_norm),
                  train_batch_size=batch_size * accelerator.num_processes,
                  bf16={"enabled": False}, fp16={"enabled": False})
    # bf16 as without ZeRO: fp32 weights (replicated), fp32 gradients and moments (sharded), torch autocast for
    # the forward (``autocast``); DeepSpeed's own bf16 would keep bf16 weights and gradients: another training
    import torch

    accelerator.state.deepspeed_plugin.autocast_dtype = torch.bfloat16 if mixed_precision == "bf16" else None


def _autocast_dtype(accelerator):
    return getattr(accelerator.state.deepspeed_plugin, "autocast_dtype", None) if zero2(accelerator) else None


def autocast(accelerator):
    """``accelerator.autocast()``; under ZeRO-2 (where accelerate leaves bf16 to DeepSpeed) torch's bf16 autocast."""
    import torch

    if (dtype := _autocast_dtype(accelerator)) is not None:
        return torch.autocast(accelerator.device.type, dtype=dtype)
    return accelerator.autocast()


def prepare(accelerator, modules: list, optimizer) -> tuple[list, object]:
    """``accelerator.prepare(*modules, optimizer)``. Under ZeRO-2 accelerate takes one model, so one DeepSpeed
    engine is built over all trained models (U-Net and text encoders) together and the models themselves come
    back: at stage 2 their forward needs nothing of the engine (gradients are reduced by hooks on the weights,
    the step runs in ``accelerator.backward``)."""
    if not zero2(accelerator):
        *wrapped, optimizer = accelerator.prepare(*modules, optimizer)
        return wrapped, optimizer
    import torch

    _, optimizer = accelerator.prepare(torch.nn.ModuleDict({str(i): m for i, m in enumerate(modules)}), optimizer)
    if _autocast_dtype(accelerator) is not None:  # each forward autocast, outputs in fp32, as accelerate does
        from types import MethodType

        from accelerate.utils import convert_outputs_to_fp32

        for module in modules:
            module._original_forward = module.forward
            forward = autocast(accelerator)(module.forward.__func__)
            module.forward = MethodType(convert_outputs_to_fp32(forward), module)
    return list(modules), optimizer


@contextlib.contextmanager
def accumulating(accelerator, model, last: bool):
    """Around one micro-batch's backward: gradients synchronise only on the chunk's last. Under ZeRO-2 every
    backward reduces its shard (DeepSpeed cannot skip that) and the engine steps only where ``last``."""
    if zero2(accelerator):
        accelerator.gradient_state._set_sync_gradients(last)
        try:
            yield
        finally:
            accelerator.gradient_state._set_sync_gradients(True)
    elif not last and accelerator.num_processes > 1:
        with accelerator.no_sync(model):
            yield
    else:
        yield


def trained_parameters(accelerator, optimizer) -> list:
    """The weights the optimizer trains, whole (under ZeRO-2 its groups hold this process's flat shards)."""
    if zero2(accelerator):
        return [p for group in _zero_optimizer(optimizer).bit16_groups for p in group]
    return [p for group in optimizer.param_groups for p in group["params"]]


def _zero_optimizer(optimizer):
    """The DeepSpeed ZeRO optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def whole_weights(accelerator, trained) -> dict:
    """``trained.state_dict()``, with each parameter's fp32 master copy under ZeRO-2 (gathered from every
    process: all of them must call this; under bf16 the model itself holds bf16 copies)."""
    weights = trained.state_dict()
    if not zero2(accelerator):
        return weights
    from deepspeed.utils import safe_get_full_fp32_param

    for name, module in trained.modules.items():
        for key, param in module.named_parameters():
            if param.requires_grad:
                whole = safe_get_full_fp32_param(param)  # a collective: every process, one weight at a time
                if accelerator.is_main_process:  # the others drop it: 8 processes need not hold 8 copies
                    weights[f"{name}.{key}"] = whole.detach().to("cpu", copy=True)
    return weights


def load_whole_weights(accelerator, trained, weights: dict) -> None:
    """``trained.load_state_dict``, and under ZeRO-2 each process's fp32 master shard too."""
    trained.load_state_dict(weights)
    if not zero2(accelerator):
        return
    import torch
    from deepspeed.utils import safe_set_full_fp32_param

    for name, module in trained.modules.items():
        for key, param in module.named_parameters():
            if param.requires_grad:
                safe_set_full_fp32_param(param, weights[f"{name}.{key}"].to(param.device, torch.float32))


def whole_optimizer_state(accelerator, optimizer) -> dict:
    """``optimizer.state_dict()`` as one process's torch optimizer writes it (every parameter's moments whole);
    under ZeRO-2 gathered from every process's shard (all of them must call this)."""
    if not zero2(accelerator):
        return optimizer.state_dict()
    from deepspeed.utils import safe_get_full_optimizer_state

    zero = _zero_optimizer(optimizer)
    base = zero.optimizer
    flats = zero.single_partition_of_fp32_groups
    # DeepSpeed 0.19.8 links every group's moments to its weights after the first group's first step, when the
    # later groups (text encoders) have none yet: link again now that all of them have stepped
    zero._hp_optimizer_states_linked = False
    zero._lazy_init_hp_params_optimizer_state()
    state, groups, index = {}, [], 0
    for group, params, flat in zip(base.param_groups, zero.bit16_groups, flats, strict=True):
        flat_state = base.state.get(flat, {})
        keys = [k for k, v in flat_state.items() if hasattr(v, "shape") and v.shape == flat.shape]
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": list(range(index, index + len(params)))})
        for param in params:
            if flat_state:
                moments = {k: safe_get_full_optimizer_state(param, k) for k in keys}  # a collective: all ranks
                # rank 0 keeps them (it writes the file); a weight that never had a gradient has no state in
                # one process's optimizer either (torch skips it), so none here: the same file
                if accelerator.is_main_process and any(bool(v.any()) for v in moments.values()):
                    state[index] = {**{k: v.clone() for k, v in flat_state.items() if k not in keys},
                                    **{k: v.detach().to("cpu", copy=True) for k, v in moments.items()}}
            index += 1
    return {"state": state, "param_groups": groups}


def load_whole_optimizer_state(accelerator, optimizer, saved: dict) -> None:
    """``optimizer.load_state_dict(saved)``; under ZeRO-2 each process keeps its shard of every moment."""
    if not zero2(accelerator):
        optimizer.load_state_dict(saved)
        return
    import torch
    from deepspeed.utils import safe_set_full_optimizer_state

    zero = _zero_optimizer(optimizer)
    base = zero.optimizer
    for number, (group, params, flat) in enumerate(zip(base.param_groups, zero.bit16_groups,
                                                       zero.single_partition_of_fp32_groups, strict=True)):
        saved_group = saved["param_groups"][number]
        if len(saved_group["params"]) != len(params):
            raise ValueError(f"the training state's optimizer group {number} holds {len(saved_group['params'])} "
                             f"weights, this run's {len(params)}: it was saved by another model or settings")
        group.update({k: v for k, v in saved_group.items() if k != "params"})
        first = next((saved["state"][i] for i in saved_group["params"] if i in saved["state"]), None)
        if first is not None:  # the flat shard's state, shaped as the optimizer makes it at its first step
            base.state[flat] = {k: (torch.zeros_like(flat) if k != "step" and torch.is_tensor(v) and v.dim() > 0
                                    else v.clone()) for k, v in first.items()}
            zero._hp_optimizer_states_linked = False
            zero._lazy_init_hp_params_optimizer_state()
            for offset, param in enumerate(params):
                for key, value in saved["state"].get(saved_group["params"][offset], {}).items():
                    if key != "step" and getattr(value, "shape", None) == param.shape:
                        safe_set_full_optimizer_state(param, value.to(flat.device, flat.dtype), key)


def replica_checksums(accelerator, parameters) -> list[int]:
    """Every process's checksum of its trained parameters' bits (the same list on every process): the bits of
    each tensor read as integers and summed in int64 on the device, so identical weights give identical sums."""
    import torch

    total = torch.zeros((), dtype=torch.int64, device=accelerator.device)
    views = {4: torch.int32, 2: torch.int16, 8: torch.int64, 1: torch.uint8}
    for index, p in enumerate(parameters):
        bits = p.detach().contiguous().view(views[p.element_size()]).to(torch.int64)
        total += (bits.sum() * (index + 1)) % (1 << 61)  # position-weighted: swapped tensors differ
    gathered = accelerator.gather(total.reshape(1))
    return [int(v) for v in gathered.cpu()]
