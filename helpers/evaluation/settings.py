"""What an evaluation does: ``EvalSettings`` (checkpoints, strengths, prompt sets, encoders, the choosing rule's
thresholds) and ``EvaluationError`` (bad input, said before any model is loaded)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from helpers.config import option

PROMPT_SETS = ("captions", "new", "trigger")


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked; the message names the file or setting and the fix."""


@dataclass
class EvalSettings:
    """Notebook 06 / ``python -m helpers.evaluation``: which images to make and how to score and choose them."""

    format_version: ClassVar[int] = 1
    checkpoints: list[str] = option([], help="the run's checkpoints to evaluate (file names, 'epoch 3', 'final'); "
                                    "empty (or None) = all of them")
    strengths: list[float] = option([0.0, 0.5, 1.0], help="LoRA strengths (0 = the base model)")
    prompt_sets: list[str] = option(list(PROMPT_SETS), help="training captions, new prompts with the trigger, "
                                    "the trigger alone")
    caption_prompts: int = option(8, min=1, help="training captions replayed (spread over the dataset)")
    new_prompts: list[str] = option([], help="new prompts ({trigger} is replaced; empty = generic prompts with "
                                    "the trigger in front)")
    new_prompt_count: int = option(6, min=1, help="how many generic prompts when new_prompts is empty")
    preservation_prompts: int = option(4, min=0, help="unrelated prompts (no trigger) compared with and without "
                                       "the LoRA / fine-tune (0 = skip base preservation)")
    triggers: list[str] = option([], help="trigger words (empty = those of the dataset's trigger check)")
    images_per_prompt: int = option(2, min=1, help="images per prompt (seeds seed, seed+1, ...): diversity needs 2+; "
                                    "each doubles the time (bench/evaluation.py)")
    seed: int = option(1234, min=0, help="first seed; the same seeds for every checkpoint and strength")
    steps: int = option(25, min=1, help="sampling steps")
    cfg: float = option(7.0, min=0.0, help="CFG scale")
    sampler: str = option("Euler a", help="sampler (A1111 name)")
    width: int = option(0, min=0, help="image width (0 = the model's native size)")
    height: int = option(0, min=0, help="image height (0 = the model's native size)")
    negative_prompt: str = option("", help="negative prompt for every image")
    batch_limit: int = option(4, min=1, help="images generated together")
    encoder: Literal["clip", "siglip"] = option("clip", help="text alignment / image similarity: CLIP ViT-L/14 "
                                                 "or SigLIP so400m (or a folder / Hub id in encoder_path)")
    encoder_path: str = option("", help="a local encoder folder or Hub id instead of the default for 'encoder'")
    dino: bool = option(True, help="DINOv2 image similarity (fidelity, memorisation) beside CLIP")
    dino_path: str = option("", help="a local DINOv2 folder or Hub id instead of facebook/dinov2-base")
    faces: Literal["auto", "on", "off"] = option("auto", help="face likeness: auto = when the training images "
                                                 "have faces")
    face_models: str = option("", help="folder with the face detector and embedder ONNX files (empty = download)")
    memorisation_threshold: float = option(0.95, min=0.0, max=1.0, help="a generated image this similar to a "
                                           "training image (DINOv2 if on, else CLIP) is flagged as memorised")
    fidelity_tolerance: float = option(0.02, min=0.0, max=1.0, help="choosing: fidelity within this fraction of "
                                       "the best counts as good")
    alignment_margin: float = option(0.0, help="choosing: text alignment on new prompts must beat the base "
                                     "model's by this many CLIP-score points")
    min_preservation: float = option(0.5, min=0.0, max=1.0, help="choosing: base preservation (similarity to "
                                     "the base's images on unrelated prompts) at least this")
    max_flagged: int = option(0, min=0, help="choosing: at most this many memorised images")
    device: str = option("auto", help="auto (GPU when there is one), cuda or cpu")
    overwrite: bool = option(True, help="replace an earlier evaluation of this run")

    def check(self) -> dict[str, str]:
        problems = {}
        unknown = sorted(set(self.prompt_sets) - set(PROMPT_SETS))
        if unknown:
            problems["prompt_sets"] = f"unknown: {', '.join(unknown)}; choose from {', '.join(PROMPT_SETS)}"
        if not self.prompt_sets:
            problems["prompt_sets"] = f"choose at least one of {', '.join(PROMPT_SETS)}"
        if not self.strengths:
            problems["strengths"] = "give at least one strength, e.g. 0, 0.5, 1"
        bad = [s for s in self.strengths if not 0.0 <= float(s) <= 2.0]
        if bad:
            problems["strengths"] = f"strengths {bad} are outside 0..2"
        if self.encoder not in ("clip", "siglip"):
            problems["encoder"] = "encoder is 'clip' or 'siglip'"
        if self.faces not in ("auto", "on", "off"):
            problems["faces"] = "faces is 'auto', 'on' or 'off'"
        if (self.width or self.height) and not (self.width and self.height):
            problems["width"] = "give both width and height, or neither (0 = the model's native size)"
        return problems
