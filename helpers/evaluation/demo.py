"""The evaluation stage of ``python -m helpers demo``: the demo run evaluated end to end on tiny offline models.

``demo_settings(ws)`` is what notebook 06 and the tests use on a demo workspace: the tiny CLIP of the dataset
stage, a tiny random DINOv2 (built here once), a few prompts and images, 64 px, 8 steps, on the CPU.
"""

from __future__ import annotations

from helpers.evaluation.settings import EvalSettings

TINY_CLIP = "tiny-clip"
TINY_DINO = "tiny-dino"


def demo_settings(ws, **changes) -> EvalSettings:
    """Settings for the demo run on tiny models (builds the tiny encoders when missing)."""
    from helpers.models.encoders import build_tiny_clip, build_tiny_dino, is_encoder_folder

    if not is_encoder_folder(ws.models / TINY_CLIP):
        build_tiny_clip(ws.models / TINY_CLIP)
    if not is_encoder_folder(ws.models / TINY_DINO):
        build_tiny_dino(ws.models / TINY_DINO)
    base = dict(encoder_path=str(ws.models / TINY_CLIP), dino_path=str(ws.models / TINY_DINO), caption_prompts=3,
                new_prompt_count=2, preservation_prompts=2, images_per_prompt=2, steps=4, cfg=5.0, width=64,
                height=64, device="cpu", faces="off", batch_limit=8,
                memorisation_threshold=0.99)  # the tiny random DINOv2 puts every image at 0.97-0.98 of the next
    return EvalSettings(**{**base, **changes})


def run_demo(ws, echo=lambda _m: None) -> dict[str, str]:
    """Evaluate ``runs/demo`` (its checkpoints and the LoRAs the generation stage extracted) on tiny models."""
    from helpers.evaluation.card import write_model_card
    from helpers.evaluation.run import evaluate_run

    evaluation = evaluate_run(ws, "demo", demo_settings(ws), progress=False, echo=echo)
    card = write_model_card(ws, "demo", evaluation, target="hub")
    rec = evaluation.recommendation
    return {"evaluation report": str(evaluation.report_path), "metrics": str(evaluation.metrics_path),
            "recommendation": rec.sentence if rec else "none", "model card": str(card)}
