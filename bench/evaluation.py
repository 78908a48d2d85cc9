"""Evaluation cost: the tiny demo evaluation's seconds on the CPU, images/s embedded by each encoder (CPU, and CUDA
when present), and what evaluating 6 checkpoints × 3 strengths × 20 prompts adds to a typical 100-epoch SDXL run on
an A100 (goal < 10 %). Prints JSON.

- demo: ``python -m helpers demo`` into a temp workspace, then ``evaluate_run`` on its run with the demo settings
  (tiny SDXL, tiny CLIP / DINOv2): seconds, images generated, the recommendation sentence;
- encoders: the real architectures with random weights (same FLOPs): CLIP ViT-L/14 (224²), SigLIP so400m (384²),
  DINOv2-base (224²), through ``ImageEncoder.embed_images`` (the library's own batching and preprocessing);
- A100 estimate: the pre-flight's FLOP model (``helpers.training.preflight``: SDXL U-Net 20.2 TFLOP fwd+bwd per
  1024² image; the same MFU for training and sampling, so the ratio does not depend on it). A sampled image costs
  steps × 2 (CFG) U-Net forwards (a forward is a third of forward+backward) + one VAE decode (counted here with
  torch's FlopCounterMode on the meta device) + the encoders' forwards (counted likewise). Strength 0 is the base
  model, generated once: 1 + 6 × 2 = 13 variants. Training: the ``sdxl_finetune_a100`` template (100 epochs × 2
  repeats, no latent cache: + VAE encode) on 20, 60 and 150 images (the guide's range).

    python bench/evaluation.py                 # everything (CPU: a few minutes)
    python bench/evaluation.py --skip-demo --encoder-images 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHECKPOINTS, STRENGTHS, PROMPTS = 6, 3, 20


def bench_demo() -> dict:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from helpers.demo import run_demo
    from helpers.evaluation import evaluate_run
    from helpers.evaluation.demo import demo_settings
    from helpers.workspace import Workspace

    root = Path(tempfile.mkdtemp(prefix="bench-eval-")) / "ws"
    t0 = time.perf_counter()
    run_demo(root, echo=lambda *_: None)
    demo_s = time.perf_counter() - t0
    ws = Workspace.open(root, create=False)
    settings = demo_settings(ws)
    t0 = time.perf_counter()
    ev = evaluate_run(ws, "demo", settings, progress=False, echo=lambda _m: None)
    seconds = time.perf_counter() - t0
    data = json.loads(ev.metrics_path.read_text())
    images = sum(len(cell) for cells in data["images"].values() for cell in cells)
    return {"seconds": round(seconds, 2), "images_generated": images, "variants": len(data["variants"]),
            "demo_pipeline_s": round(demo_s, 1), "recommendation": ev.recommendation.sentence if ev.recommendation
            else None, "note": "tiny SDXL 64², 4 steps; tiny CLIP + DINOv2; CPU"}


def real_encoder(kind: str, folder: Path):
    """(model, preprocessor config, image side): random weights, real architecture."""
    from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model, SiglipConfig, SiglipModel

    norm_clip = {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
    if kind == "clip-vit-large-patch14":
        cfg = CLIPConfig(text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                          num_hidden_layers=12),
                         vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                            num_hidden_layers=24, image_size=224, patch_size=14), projection_dim=768)
        return CLIPModel(cfg), {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 224},
                                "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, **norm_clip}
    if kind == "siglip-so400m":
        cfg = SiglipConfig(text_config=dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16,
                                            num_hidden_layers=27),
                           vision_config=dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16,
                                              num_hidden_layers=27, image_size=384, patch_size=14))
        return SiglipModel(cfg), {"image_processor_type": "SiglipImageProcessor", "size": {"height": 384, "width": 384},
                                  "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    cfg = Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       image_size=518, patch_size=14)
    return Dinov2Model(cfg), {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 256},
                              "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
                              "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def bench_encoder(kind: str, device: torch.device, images: int) -> dict:
    from PIL import Image
    from transformers import AutoImageProcessor

    from helpers.models.encoders import ImageEncoder

    folder = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    torch.manual_seed(0)
    model, proc = real_encoder(kind, folder)
    proc |= {"do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
             "do_convert_rgb": True}
    (folder / "preprocessor_config.json").write_text(json.dumps(proc))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = model.to(device, dtype).eval()
    family = "dinov2" if "dino" in kind else "siglip" if "siglip" in kind else "clip"
    enc = ImageEncoder(kind, family, model, AutoImageProcessor.from_pretrained(str(folder), backend="pil"), None,
                       device, dtype, "bench", 1.0)
    pictures = [Image.new("RGB", (1024, 1024), (i * 20 % 255, 90, 160)) for i in range(images)]
    enc.embed_images(pictures[:2], batch_size=2)  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    enc.embed_images(pictures, batch_size=32)
    sync()
    seconds = time.perf_counter() - t0
    return {"images_per_s": round(images / seconds, 2), "images": images, "params_m": round(
        sum(p.numel() for p in model.parameters()) / 1e6, 1)}


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def vae_decode_flops(side: int = 1024) -> float:
    from diffusers import AutoencoderKL

    config = json.loads((ROOT / "helpers/models/configs/sdxl/vae/config.json").read_text())
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
        z = torch.randn(1, 4, side // 8, side // 8)
    with torch.no_grad():
        return count_flops(lambda: vae.decode(z))


def encoder_flops(kind: str) -> float:
    with torch.device("meta"):
        model, proc = real_encoder(kind, Path("."))
        side = proc.get("crop_size", proc.get("size"))["height"]
        px = torch.randn(1, 3, side, side)
    with torch.no_grad():
        if kind == "dinov2-base":
            return count_flops(lambda: model(pixel_values=px))
        return count_flops(lambda: model.get_image_features(pixel_values=px))


def a100_estimate(images_per_prompt: list[int], steps: int = 25) -> dict:
    from helpers.config import build_config
    from helpers.training import preflight
    from helpers.training.config import TrainConfig

    cfg = build_config(TrainConfig, "sdxl_finetune_a100")
    train_flops, _ = preflight.TRAIN_FLOPS["sdxl"]
    per_train_image = train_flops + (preflight.VAE_ENCODE_FLOPS_1024 if cfg.data.cache_latents == "off" else 0)
    decode = vae_decode_flops()
    embed = encoder_flops("clip-vit-large-patch14") + encoder_flops("dinov2-base")
    per_sample = steps * 2 * train_flops / 3 + decode + embed
    effective = preflight.GPU_PEAK_TFLOPS["A100"] * 1e12 * preflight.MFU
    measured = measured_training_mfu()
    variants = 1 + CHECKPOINTS * (STRENGTHS - 1)
    out = {"sampled_image_tflop": round(per_sample / 1e12, 1), "vae_decode_tflop": round(decode / 1e12, 2),
           "encoders_gflop_per_image": round(embed / 1e9, 1), "s_per_sampled_image": round(per_sample / effective, 2),
           "training_image_tflop": round(per_train_image / 1e12, 1), "variants": variants, "prompts": PROMPTS,
           "steps": steps, "flop_model_mfu": preflight.MFU, "measured_training_mfu": measured, "runs": []}
    for dataset in (20, 60, 150):
        trained = dataset * cfg.data.repeats * cfg.epochs
        train_h = trained * per_train_image / effective / 3600
        for k in images_per_prompt:
            sampled = variants * PROMPTS * k
            eval_h = sampled * per_sample / effective / 3600
            row = {"dataset_images": dataset, "images_per_prompt": k, "sampled_images": sampled,
                   "training_h": round(train_h, 2), "evaluation_h": round(eval_h, 2),
                   "adds_pct": round(100 * eval_h / train_h, 1)}
            if measured:  # training at the efficiency a measured full fine-tune reached, sampling at the model's
                slow_h = train_h * preflight.MFU / measured["mfu"]
                row |= {"training_h_measured_eff": round(slow_h, 2), "adds_pct_measured_eff": round(
                    100 * eval_h / slow_h, 1)}
            out["runs"].append(row)
    return out


def measured_training_mfu() -> dict | None:
    """The MFU a measured SDXL full fine-tune at 1024² reached (``helpers/training/speeds.toml``), or None."""
    from helpers.training import preflight
    from helpers.training.calibration import read_table

    for row in read_table():
        if (row["arch"], row["resolution"], row["mode"], row.get("batch_size")) == ("sdxl", 1024, "full", 1):
            peak = preflight.gpu_peak_tflops(row["gpu"])
            if peak:
                flops = preflight.TRAIN_FLOPS["sdxl"][0]
                return {"mfu": round(flops / row["s_per_step"] / (peak * 1e12), 3), "gpu": row["gpu"],
                        "s_per_step": row["s_per_step"], "source": row.get("source", "")}
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--encoder-images", type=int, default=8, help="images per encoder timing")
    parser.add_argument("--encoders", default="clip-vit-large-patch14,siglip-so400m,dinov2-base")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, torch.get_num_threads()))
    result: dict = {"torch_threads": torch.get_num_threads()}
    if not args.skip_demo:
        result["demo_cpu"] = bench_demo()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    result["encoders"] = {}
    for kind in args.encoders.split(","):
        result["encoders"][kind] = {d.type: bench_encoder(kind, d, args.encoder_images if d.type == "cpu" else 64)
                                    for d in devices}
    est = a100_estimate([1, 2, 4])
    typical = next(r for r in est["runs"] if r["dataset_images"] == 60 and r["images_per_prompt"] == 1)
    fits = [r for r in est["runs"] if r["adds_pct"] < 10]
    est["verdict"] = (f"6 checkpoints × 3 strengths × 20 prompts, 1 image each, adds {typical['adds_pct']} % to a "
                      f"100-epoch run on 60 images by the FLOP model (goal < 10 %: "
                      f"{'met' if typical['adds_pct'] < 10 else 'not met'}); under 10 % for: "
                      + (", ".join(f"{r['dataset_images']} images × {r['images_per_prompt']}/prompt" for r in fits)
                         or "none of the cases"))
    if "adds_pct_measured_eff" in typical:
        est["verdict"] += (f"; with training at the measured {est['measured_training_mfu']['gpu']} full fine-tune's "
                           f"efficiency ({est['measured_training_mfu']['mfu']:.0%} MFU) it adds "
                           f"{typical['adds_pct_measured_eff']} %")
    result["a100_estimate"] = est
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
