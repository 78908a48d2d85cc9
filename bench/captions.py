"""What per-step captions and long prompts cost. Prints JSON.

1. The caption pipeline (``helpers.training.captions``) with every option on, on 40-tag captions and a
   20,000-row implications file (the size of e621's active list): microseconds per caption, and the time to
   read the implications file. A loader worker builds one caption per image, so this is to compare with the
   ~10-50 ms it spends decoding and resizing the image.
2. Long prompts: training FLOPs per image of the real SDXL and SD 1.5 configs (counted with torch's
   FlopCounterMode on the meta device, so no GPU and no weights) at 75, 150, 225 and 525 caption tokens: the
   U-Net forward + backward at its native resolution with the longer cross-attention context, plus the text
   encoders (forward, and backward when they train) once per 75-token chunk.

    python bench/captions.py
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIGS = Path(__file__).resolve().parent.parent / "helpers" / "models" / "configs"


def bench_pipeline(samples: int = 20_000) -> dict:
    from helpers.training.captions import CaptionConfig, CaptionPipeline, CaptionSource
    from helpers.training.implications import load_implications

    rng = random.Random(0)
    vocab = [f"tag {i}" for i in range(5000)]
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "implications.csv"
        # chains of 4 (a -> b -> c -> d) like e621's species/body tags, 20,000 rows in all
        rows = [f"{vocab[i]},{vocab[i + 1]}" for start in range(0, 4000, 4) for i in range(start, start + 3)]
        rows += [f"extra {i},{rng.choice(vocab)}" for i in range(20_000 - len(rows))]
        csv.write_text("antecedent_name,consequent_name\n" + "\n".join(rows) + "\n", encoding="utf-8")
        started = time.perf_counter()
        implications = load_implications(csv)
        load_s = time.perf_counter() - started
    cfg = CaptionConfig(shuffle_caption=True, keep_tokens=2, tag_dropout=0.15, caption_dropout=0.1,
                        short_caption_chance=0.05, implication_dropout=0.4, implications_csv=str(csv),
                        fixed_tags=["*quality", "newest", "safe"], important_tags=["tag 1*"], wildcards=True,
                        caption_prefix="sks", mix_tags=0.7, mix_caption=0.2, mix_both=0.1)
    sources = []
    for _ in range(1000):
        tags = rng.sample(vocab, 40) + ["best quality", "newest", "safe"]
        sources.append(CaptionSource(", ".join(tags), tuple(tags), 2, "A picture of {a cat|a dog} on a chair."))
    pipeline = CaptionPipeline(sources, cfg, implications)
    started = time.perf_counter()
    for i in range(samples):
        pipeline(i % len(sources), 0, random.Random(i))
    per_caption = (time.perf_counter() - started) / samples
    return {"implication_rows": 20_000, "implications_load_s": round(load_s, 3), "tags_per_caption": 43,
            "us_per_caption_all_options": round(per_caption * 1e6, 1)}


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def text_encoder_flops(config: dict, chunks: int, backward: bool) -> float:
    """FLOPs of one caption's ``chunks`` 77-token sequences through a CLIP text encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(**config))
        ids = torch.zeros(chunks, 77, dtype=torch.long)

    def run():
        out = model(ids, output_hidden_states=True).hidden_states[-2]
        if backward:
            out.sum().backward()

    return count_flops(run)


def unet_flops(config: dict, resolution: int, context: int, pooled_dim: int) -> float:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        latent = torch.randn(1, 4, resolution // 8, resolution // 8)
        timestep = torch.tensor([500])
        text = torch.randn(1, context, config["cross_attention_dim"])
        extra = {}
        if config.get("addition_embed_type") == "text_time":
            extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pooled_dim), "time_ids": torch.randn(1, 6)}}
    return count_flops(lambda: unet(latent, timestep, encoder_hidden_states=text, **extra).sample.sum()
                       .backward())


def bench_long_prompts() -> dict:
    out = {}
    for arch, resolution, encoders in (("sdxl", 1024, ("text_encoder", "text_encoder_2")),
                                       ("sd15", 512, ("text_encoder",))):
        unet_config = json.loads((CONFIGS / arch / "unet" / "config.json").read_text())
        te_configs = [json.loads((CONFIGS / arch / name / "config.json").read_text()) for name in encoders]
        pooled = te_configs[-1].get("projection_dim", 1280)
        rows = {}
        for tokens in (75, 150, 225, 525):
            chunks = tokens // 75
            unet = unet_flops(unet_config, resolution, tokens + 2, pooled)
            te_frozen = sum(text_encoder_flops(c, chunks, backward=False) for c in te_configs)
            te_trained = sum(text_encoder_flops(c, chunks, backward=True) for c in te_configs)
            rows[tokens] = {"unet_train_tflop": round(unet / 1e12, 3), "te_forward_tflop": round(te_frozen / 1e12, 4),
                            "te_train_tflop": round(te_trained / 1e12, 4)}
        base = rows[75]
        for row in rows.values():
            row["cost_vs_75_frozen_te"] = round((row["unet_train_tflop"] + row["te_forward_tflop"])
                                                / (base["unet_train_tflop"] + base["te_forward_tflop"]), 4)
            row["cost_vs_75_trained_te"] = round((row["unet_train_tflop"] + row["te_train_tflop"])
                                                 / (base["unet_train_tflop"] + base["te_train_tflop"]), 4)
        out[f"{arch}_{resolution}"] = rows
    return out


def main() -> int:
    torch.set_num_threads(1)
    result = {"caption_pipeline": bench_pipeline(), "long_prompt_flops_per_image": bench_long_prompts()}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
