"""``python -m helpers.models`` inspect / convert, and the demo hook."""

from __future__ import annotations

import json
import shutil

import torch

from helpers.models import open_checkpoint
from helpers.models.__main__ import main
from helpers.models.demo import run_demo


def test_inspect_and_convert(tiny_sd15_v_dir, tmp_path, capsys):
    assert main(["inspect", str(tiny_sd15_v_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["arch"], summary["prediction"], summary["layout"]) == ("sd15", "v_prediction", "diffusers")
    assert list(summary["components"]) == ["unet", "vae", "te1"]

    out = tmp_path / "m.safetensors"
    assert main(["convert", str(tiny_sd15_v_dir), str(out), "--precision", "bf16"]) == 0
    with open_checkpoint(out) as single, open_checkpoint(tiny_sd15_v_dir) as folder:
        assert single.prediction == "v_prediction"
        name = "mid_block.attentions.0.proj_in.weight"
        assert torch.equal(single.get("unet", name), folder.get("unet", name).to(torch.bfloat16))
    assert main(["convert", str(tiny_sd15_v_dir), str(out)]) == 2  # exists: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err

    back = tmp_path / "back"
    assert main(["convert", str(out), str(back), "--precision", "fp32"]) == 0
    assert open_checkpoint(back).layout == "diffusers"
    assert main(["inspect", str(back)]) == 0 and "sd15, v_prediction, diffusers" in capsys.readouterr().out


def test_cli_errors_exit_nonzero(tmp_path, capsys, tiny_sd15_dir):
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["convert", str(tiny_sd15_dir), str(tmp_path / "x.safetensors"), "--arch", "sdxl"]) == 2
    assert "arch='sdxl' was declared" in capsys.readouterr().err


def test_run_demo_reports_models(workspace, tiny_sdxl_dir):
    shutil.copytree(tiny_sdxl_dir, workspace.model("tiny-sdxl"))
    (workspace.models / "broken.safetensors").write_bytes(b"not a model")
    result = run_demo(workspace)
    assert set(result) == {"model tiny-sdxl", "model broken.safetensors"}
    assert result["model tiny-sdxl"].startswith("sdxl epsilon diffusers")
    assert result["model broken.safetensors"].startswith("not loadable:")
