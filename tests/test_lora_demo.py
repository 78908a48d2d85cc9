"""The LoRA stage end to end: the demo hook (with and without a training run) and the command line."""

from __future__ import annotations

import json
import shutil

from helpers.lora.__main__ import main
from helpers.lora.demo import make_tuned_copy, run_demo
from helpers.lora.formats import read_lora


def test_run_demo_without_a_training_run_uses_a_stand_in(workspace, tiny_sdxl_dir):
    shutil.copytree(tiny_sdxl_dir, workspace.model("tiny-sdxl"))
    out = run_demo(workspace)
    assert "stand-in" in out["lora source"]
    big, small = read_lora(out["extracted LoRA (rank 16, conv 8)"]), read_lora(out["resized LoRA (rank 4)"])
    assert set(big.modules) == set(small.modules)
    assert {m.rank for m in small.modules.values()} <= {1, 2, 3, 4}
    assert json.loads(open(out["fidelity report"]).read())["overall"]["layers_extracted"] == len(big.modules)


def test_run_demo_uses_the_newest_training_checkpoint(workspace, tiny_sdxl_dir, tmp_path):
    shutil.copytree(tiny_sdxl_dir, workspace.model("tiny-sdxl"))
    run = workspace.run("demo").create()
    # a training output: here the tuned U-Net saved in diffusers naming (what open_checkpoint also reads)
    tuned = make_tuned_copy(tiny_sdxl_dir, tmp_path / "tuned", ("unet",))
    shutil.copy(next((tuned / "unet").glob("*.safetensors")), run.checkpoints / "demo-step00000002.safetensors")
    out = run_demo(workspace)
    assert "demo-step00000002" in out["lora source"]
    assert all(n.startswith("lora_unet_") for n in read_lora(out["extracted LoRA (rank 16, conv 8)"]).modules)


def test_cli_extract_merge_inspect(tiny_sd15_dir, tmp_path, capsys):
    tuned = make_tuned_copy(tiny_sd15_dir, tmp_path / "tuned", ("unet", "te1"))
    lora = tmp_path / "cli.safetensors"
    assert main(["extract", "--base", str(tiny_sd15_dir), "--tuned", str(tuned), "--rank", "8", "--conv-rank", "4",
                 "--out", str(lora), "--exact"]) == 0
    text = capsys.readouterr().out
    assert "text encoder 1: 12 of 12 layers extracted" in text and "fidelity.json" in text
    assert main(["inspect", str(lora)]) == 0
    shown = capsys.readouterr().out
    assert "architecture: sd15" in shown and "ss_network_dim = 8" in shown
    merged = tmp_path / "merged.safetensors"
    assert main(["merge", "--base", str(tiny_sd15_dir), "--in", str(lora), "--strength", "0.5", "--out", str(merged)]) == 0
    assert merged.exists()
    # bad input: non-zero exit and a message, nothing written
    assert main(["extract", "--base", str(tiny_sd15_dir), "--tuned", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "x.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()
