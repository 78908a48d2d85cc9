"""Several processes: the launch command lines (GPUs, FSDP, several machines), FSDP refused without CUDA, the
shipped FSDP accelerate config as accelerate reads it, and two real CPU processes (gloo) training one run to
identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.config import save_config
from helpers.training.launch import FSDP_CONFIG, LaunchError, check_launch, launch_command
from tests.test_training_loop import make_dataset, tiny_config

REPO = Path(__file__).resolve().parent.parent


def test_launch_command_lines(tmp_path):
    cfg = tmp_path / "config.toml"
    assert launch_command(cfg, 1, python="py") == ["py", "-m", "helpers.training", str(cfg)]
    assert launch_command(cfg, 2, trainer_args=["--resume", "latest"], python="py") == [
        "py", "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "-m", "helpers.training", str(cfg), "--resume", "latest"]
    fsdp = launch_command(cfg, 4, fsdp=True, python="py")
    assert fsdp[:5] == ["py", "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG)]
    assert "--multi_gpu" not in fsdp and fsdp[fsdp.index("--num_processes") + 1] == "4"
    two = launch_command(cfg, 8, num_machines=2, machine_rank=1, main_process_ip="10.0.0.5", python="py")
    assert two[two.index("--num_processes") + 1] == "16" and two[two.index("--machine_rank") + 1] == "1"
    assert two[two.index("--main_process_ip") + 1] == "10.0.0.5" and "--main_process_port" in two
    with pytest.raises(LaunchError, match="main-process-ip"):
        launch_command(cfg, 8, num_machines=2, python="py")
    with pytest.raises(LaunchError, match="machine-rank"):
        launch_command(cfg, 8, num_machines=2, machine_rank=2, main_process_ip="x", python="py")


def test_fsdp_is_refused_without_cuda_before_anything_starts(tmp_path, capsys):
    from helpers.training.__main__ import main

    with pytest.raises(LaunchError, match="needs CUDA"):
        check_launch(2, fsdp=True, cuda_devices=0)
    with pytest.raises(LaunchError, match="at most 2"):
        check_launch(4, fsdp=False, cuda_devices=2)
    check_launch(2, fsdp=False, cuda_devices=0)  # CPU processes over gloo are fine
    config = save_config(tiny_config(tmp_path / "m", tmp_path / "d", **{"model.base_model": "x"}),
                         tmp_path / "run" / "config.toml")
    assert main([str(config), "--gpus", "2", "--fsdp"]) == 2
    assert "FSDP needs CUDA" in capsys.readouterr().err and not (tmp_path / "run" / "log.jsonl").exists()


def test_the_trainer_stops_at_start_under_fsdp():
    """The saves read whole weights: under FSDP the trainer refuses before loading anything (its message says
    what to use instead); data parallel and one process train."""
    import types

    from accelerate.utils import DistributedType

    from helpers.training.launch import unsupported_mode

    message = unsupported_mode(types.SimpleNamespace(distributed_type=DistributedType.FSDP))
    assert "FSDP" in message and "--gpus N without --fsdp" in message and "nothing was loaded" in message
    for mode in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU, DistributedType.NO):
        assert unsupported_mode(types.SimpleNamespace(distributed_type=mode)) is None


def test_the_shipped_fsdp_config_is_what_accelerate_reads():
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(FSDP_CONFIG))
    assert config.distributed_type.value == "FSDP" and not config.use_cpu
    fsdp = config.fsdp_config
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD" and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert set(fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",")) >= {"BasicTransformerBlock", "ResnetBlock2D"}
    from diffusers.models.attention import BasicTransformerBlock  # the classes named exist where they are wrapped
    from diffusers.models.resnet import ResnetBlock2D

    assert BasicTransformerBlock and ResnetBlock2D


@pytest.mark.slow
@pytest.mark.parametrize("network", [{"network.algo": "lokr", "network.factor": 4, "network.dim": 4,
                                      "network.train_text_encoder": True}], ids=["lokr-with-te"])  # full: same path
def test_two_cpu_processes_end_with_identical_weights(network, tiny_sdxl_dir, tmp_path):
    """``--gpus 2`` on a CPU machine: two gloo processes share each epoch's batches; at the end every process's
    trained weights (the whole model, or the adapter) have the same checksum, logged by the trainer, and the
    run's file is written once."""
    cfg = tiny_config(tiny_sdxl_dir, make_dataset(tmp_path / "d", n=3), **{"batch_size": 1, "max_steps": 2, **network})
    config = save_config(cfg, tmp_path / "run" / "config.toml")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "helpers.training", str(config), "--gpus", "2", "--progress", "off"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    start = next(e for e in events if e.get("event") == "start")
    replicas = next(e for e in events if e.get("event") == "replicas")
    assert start["processes"] == 2 and replicas["processes"] == 2
    assert replicas["agree"] and len(set(replicas["checksums"])) == 1
    assert len(list((tmp_path / "run" / "checkpoints").glob("*.safetensors"))) == 1
