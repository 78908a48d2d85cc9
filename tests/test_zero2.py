"""DeepSpeed ZeRO-2 (``--zero2``): the launch line and shipped config, what the trainer refuses under it before
loading a model, and two real CPU processes (DeepSpeed's CPU accelerator over gloo) training a tiny SDXL full
fine-tune (bf16, U-Net and both text encoders): the weights end within float rounding of the same run data
parallel without ZeRO (gradients reduced
in another order), the training state holds the optimizer state whole (the one-process format), and a resume
from a state in the middle ends bit-identical to the uninterrupted ZeRO-2 run.

deepspeed is in requirements.txt (installed by setup.sh); without it these tests fail and say so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from helpers.config import save_config
from helpers.training.launch import ZERO2_CONFIG, LaunchError, check_launch, launch_command, unsupported_mode
from helpers.training.progress import step_losses
from tests.test_training_loop import make_dataset, tiny_config

REPO = Path(__file__).resolve().parent.parent


def test_zero2_launch_line_and_shipped_config(tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig

    cmd = launch_command(tmp_path / "c.toml", 2, zero2=True, python="py")
    assert cmd[:5] == ["py", "-m", "accelerate.commands.launch", "--config_file", str(ZERO2_CONFIG)]
    assert "--multi_gpu" not in cmd and cmd[cmd.index("--num_processes") + 1] == "2"
    with pytest.raises(LaunchError, match="choose one"):
        launch_command(tmp_path / "c.toml", 2, zero2=True, fsdp=True, python="py")
    config = ClusterConfig.from_yaml_file(str(ZERO2_CONFIG))
    assert config.distributed_type.value == "DEEPSPEED" and not config.use_cpu
    assert config.deepspeed_config["zero_stage"] == 2 and config.deepspeed_config["gradient_accumulation_steps"] == 1
    check_launch(2, fsdp=False, zero2=True, cuda_devices=0)  # a CPU machine runs it (gloo)


def test_what_zero2_refuses_before_loading(tmp_path):
    from accelerate.utils import DistributedType

    state = types.SimpleNamespace(deepspeed_plugin=types.SimpleNamespace(zero_stage=2))
    accelerator = types.SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=state)
    base = {"model.base_model": "x"}
    assert unsupported_mode(accelerator, tiny_config(tmp_path, tmp_path, **base)) is None
    cases = {"Prodigy": {"optimizer.optimizer": "Prodigy"}, "fp16": {"precision.mixed_precision": "fp16"},
             "adapter": {"network.algo": "lora"}}
    for expected, overrides in cases.items():
        message = unsupported_mode(accelerator, tiny_config(tmp_path, tmp_path, **base, **overrides))
        assert message and "nothing was loaded" in message, expected
    assert "optimizer.optimizer" in unsupported_mode(accelerator, tiny_config(tmp_path, tmp_path, **base,
                                                                            **cases["Prodigy"]))
    state.deepspeed_plugin.zero_stage = 3
    assert "stage 3" in unsupported_mode(accelerator, tiny_config(tmp_path, tmp_path, **base))


def _train(config: Path, *extra: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "helpers.training", str(config), "--gpus", "2", "--progress", "off",
                           *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _events(run: Path, name: str) -> list[dict]:
    return [e for e in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if e.get("event") == name]


@pytest.mark.slow
def test_two_cpu_processes_under_zero2_match_data_parallel_and_resume_exactly(tiny_sdxl_dir, tmp_path):
    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"deepspeed does not import ({exc}): pip install -r requirements.txt")
    from safetensors.torch import load_file

    dataset = make_dataset(tmp_path / "d", n=4)
    cfg = tiny_config(tiny_sdxl_dir, dataset, **{
        "batch_size": 1, "epochs": 3, "max_steps": 3, "optimizer.gradient_accumulation_steps": 2,
        "optimizer.lr_scheduler": "cosine", "optimizer.train_text_encoder": True, "precision.mixed_precision": "bf16", "saving.state_every_n_steps": 1, "saving.keep_last_states": 5})
    runs = {name: save_config(cfg, tmp_path / name / "config.toml") for name in ("zero2", "ddp")}
    _train(runs["zero2"], "--zero2")
    _train(runs["ddp"])
    zero2 = tmp_path / "zero2"
    assert _events(zero2, "start")[0]["processes"] == 2 and _events(zero2, "replicas")[0]["agree"]

    # 1. the same training as data parallel (bf16 autocast, U-Net and both text encoders), up to the order in
    # which gradients are summed; weights that never get a gradient (TE1's last layer) only see weight decay
    final = {name: load_file(str(tmp_path / name / "state" / "step-00000003" / "weights.safetensors"))
             for name in ("zero2", "ddp")}
    start = load_file(str(tmp_path / "ddp" / "state" / "step-00000001" / "weights.safetensors"))
    assert {k.split(".")[0] for k in start} == {"unet", "te1", "te2"}
    learned = [k for k in start if not torch.equal(final["ddp"][k], start[k])]
    unused = [k for k in start if k not in learned]
    assert unused and all(k.startswith("te1.") for k in unused)
    update = sum(((final["ddp"][k].double() - start[k].double()) ** 2).sum() for k in learned).sqrt()
    apart = sum(((final["zero2"][k].double() - final["ddp"][k].double()) ** 2).sum() for k in learned).sqrt()
    # bf16 rounding turns the ~1e-7 summation-order differences into ~2e-3 of the update by step 3 (fp32: 8e-5);
    # a real fault (no averaging over processes, a double step per accumulation, a lost LR) is 10-100 %
    assert update > 0.1 and apart / update < 1e-2, (float(update), float(apart))
    losses = {name: step_losses(tmp_path / name / "log.jsonl") for name in ("zero2", "ddp")}
    assert len(losses["zero2"]) == 3 and list(losses["zero2"].values()) == pytest.approx(
        list(losses["ddp"].values()), rel=1e-3)
    assert all(torch.allclose(final["zero2"][k], start[k], rtol=1e-4) for k in unused)
    # the state's optimizer holds every weight's moments whole, as one process writes them
    optimizer = {name: torch.load(tmp_path / name / "state" / "step-00000003" / "optimizer.pt", weights_only=True)
                 for name in ("zero2", "ddp")}
    assert optimizer["zero2"]["state"].keys() == optimizer["ddp"]["state"].keys()
    assert len(optimizer["zero2"]["state"]) == len(learned)
    assert [g["params"] for g in optimizer["zero2"]["param_groups"]] == [g["params"] for g in optimizer["ddp"]["param_groups"]]
    for index, entry in optimizer["ddp"]["state"].items():
        other = optimizer["zero2"]["state"][index]
        assert other.keys() == entry.keys() and float(other["step"]) == float(entry["step"]) == 3
        assert other["exp_avg"].shape == entry["exp_avg"].shape
    moments = {name: torch.cat([e["exp_avg_sq"].flatten() for e in optimizer[name]["state"].values()])
               for name in ("zero2", "ddp")}
    assert (moments["zero2"] - moments["ddp"]).norm() / moments["ddp"].norm() < 1e-2  # gathered in place

    # 2. resume from the state after step 1: bit-identical to the uninterrupted ZeRO-2 run
    resumed = tmp_path / "resumed"
    (resumed / "state").mkdir(parents=True)
    shutil.copy(runs["zero2"], resumed / "config.toml")
    shutil.copytree(zero2 / "state" / "step-00000001", resumed / "state" / "step-00000001")
    _train(resumed / "config.toml", "--zero2", "--resume", "latest")
    assert _events(resumed, "resume")[0]["step"] == 1
    a, b = load_file(str(zero2 / "checkpoints" / "zero2.safetensors")), \
        load_file(str(resumed / "checkpoints" / "resumed.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = torch.load(resumed / "state" / "step-00000003" / "optimizer.pt", weights_only=True)
    assert all(torch.equal(again["state"][i]["exp_avg"], e["exp_avg"]) for i, e in optimizer["zero2"]["state"].items())
