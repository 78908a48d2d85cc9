"""The generation stage of ``python -m helpers demo``: a labelled grid of prompts × epochs × LoRA strengths.

Owns ``run_demo(ws)``: a LoRA is extracted from each checkpoint the demo training run kept (``helpers.lora``),
then one grid shows each epoch's LoRA on the base model at strengths 0 (the base), 0.5 and 1, a page per
prompt; the guide's review (captions 1:1, generic prompts) follows on the final LoRA.
"""

from __future__ import annotations

from pathlib import Path

PROMPTS = ["a red circle on a blue background", "a green square, simple shapes"]


def epoch_loras(ws, base: Path, checkpoints: list[Path]) -> list[Path]:
    """One rank-8 LoRA per checkpoint, named by the epoch its checkpoint recorded (``exports/demo-e0001…``)."""
    from helpers.lora.extract import extract_lora
    from helpers.models import open_checkpoint

    out = []
    for ckpt in checkpoints:
        with open_checkpoint(ckpt) as ck:
            epoch = int(ck.metadata.get("tunebook.epoch", len(out) + 1))
        lora = ws.exports / f"demo-e{epoch:04d}.safetensors"
        lora.unlink(missing_ok=True)
        extract_lora(base, ckpt, lora, rank=8, conv_rank=4, progress=False)
        out.append(lora)
    return out


def run_demo(ws) -> dict[str, str]:
    """Grid of the demo run's epochs (as LoRAs on the base) × strengths, one page per prompt; then a review."""
    from helpers.generation.grid import make_axis, render_grid
    from helpers.generation.loras import LoraSpec
    from helpers.generation.pipeline import ImageSettings, open_generator
    from helpers.generation.review import GENERIC_PROMPTS, guide_review

    base = ws.models / "tiny-sdxl.safetensors"
    run = ws.run("demo")
    checkpoints = sorted(run.checkpoints.glob("*.safetensors"), key=lambda p: p.stat().st_mtime) \
        if run.checkpoints.is_dir() else []
    if not base.exists() or not checkpoints:
        raise FileNotFoundError(f"the demo needs the tiny base model ({base}) and the demo run's checkpoints "
                                f"({run.checkpoints}): run `python -m helpers demo` from the start")
    loras = epoch_loras(ws, base, checkpoints)
    settings = ImageSettings(steps=8, cfg=5.0, seed=7, width=64, height=64)
    def open_model(src):
        return open_generator(src, device="cpu", echo=lambda _m: None)

    axes = [make_axis("checkpoint", [str(p) for p in loras]), make_axis("strength", [0.0, 0.5, 1.0]),
            make_axis("prompt", PROMPTS)]
    grid = render_grid(base, axes, ws.exports / "demo-grid", base=settings, overwrite=True, progress=False,
                       open_model=open_model, cell_size=128)
    review = guide_review(base, ws.exports / "demo-review", dataset=ws.datasets / "demo", loras=[LoraSpec(loras[-1])],
                          base=settings, caption_limit=4, generic_prompts=GENERIC_PROMPTS[::2], overwrite=True,
                          progress=False, cell_size=128, open_model=open_model)
    samples = sorted(run.samples.glob("*.png")) if run.samples.is_dir() else []
    return {"LoRA per epoch": ", ".join(p.name for p in loras),
            "grid (epochs × LoRA strengths, a page per prompt)": ", ".join(str(p) for p in grid.pages),
            "review: captions 1:1": ", ".join(str(p) for p in review.get("captions", [])),
            "review: generic prompts": ", ".join(str(p) for p in review["generic"]),
            "samples during training": f"{len(samples)} images in {run.samples}"}
