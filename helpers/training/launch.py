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

``replica_checksums`` is what the trainer logs at the end of a multi-process run: one integer per process over
the bits of every trained parameter (identical processes, identical numbers); a difference is a warning.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

FSDP_CONFIG = Path(__file__).resolve().parent.parent.parent / "templates" / "accelerate" / "fsdp_sdxl.yaml"
LAUNCHED_ENV = "LOCAL_RANK"  # set by accelerate / torchrun in each process they start


class LaunchError(ValueError):
    """A launch that cannot work here (the message says why and what to do)."""


def under_launcher() -> bool:
    """Whether this process was started by accelerate launch / torchrun (so it must not launch again)."""
    return LAUNCHED_ENV in os.environ


def launch_command(config_path: str | os.PathLike, gpus: int, *, trainer_args: list[str] | None = None,
                   fsdp: bool = False, num_machines: int = 1, machine_rank: int = 0,
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
    if gpus == 1 and num_machines == 1 and not fsdp:
        return [python, *trainer]
    cmd = [python, "-m", "accelerate.commands.launch"]
    if fsdp:
        cmd += ["--config_file", str(FSDP_CONFIG)]
    else:
        cmd += ["--multi_gpu"]
    cmd += ["--num_processes", str(gpus * num_machines)]
    if num_machines > 1 or fsdp:
        cmd += ["--num_machines", str(num_machines), "--machine_rank", str(machine_rank)]
    if main_process_ip:
        cmd += ["--main_process_ip", main_process_ip, "--main_process_port", str(main_process_port or 29500)]
    return cmd + trainer


def check_launch(gpus: int, fsdp: bool, cuda_devices: int | None = None) -> None:
    """Refuse what cannot run on this machine, before any process starts."""
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
                  "or an adapter template (its frozen base needs no sharding); nothing was loaded or written")


def unsupported_mode(accelerator) -> str | None:
    """Why the trainer must stop at start (before any model is loaded) under this distributed mode, or None."""
    from accelerate.utils import DistributedType

    return FSDP_NOT_READY if accelerator.distributed_type == DistributedType.FSDP else None


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
