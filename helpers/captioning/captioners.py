"""Natural-language captions with transformers: Florence-2 (default), BLIP (fast), and chat VLMs with a prompt.

Three families, all native transformers 5 classes (no ``trust_remote_code``):

- "florence2": ``Florence2ForConditionalGeneration`` + its processor; a task token such as
  ``<MORE_DETAILED_CAPTION>`` (the processor expands it), beam search, ``post_process_generation`` to parse;
- "blip": ``BlipForConditionalGeneration``; one short sentence, optionally continuing a text prefix;
- "vlm": any ``AutoModelForImageTextToText`` chat model (Qwen2.5-VL, JoyCaption's LLaVA build, ...): the
  user's prompt in the processor's chat template, left padding for batches, only the new tokens decoded.

The VRAM a model needs is estimated (and shown) before it is loaded. bf16 on GPUs that have it, fp16 on older
ones, fp32 on the CPU. Captions are stored in each image's caption record under the captioner's name, apart
from the tags (see ``sidecar``).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from PIL import Image

from helpers.captioning import sidecar
from helpers.captioning.images import iter_batches
from helpers.config import option
from helpers.dataset.files import list_images

Family = Literal["florence2", "blip", "vlm"]


@dataclass(frozen=True)
class CaptionerSpec:
    repo: str
    family: Family
    params_billion: float
    note: str


# parameter counts from the model cards; JoyCaption beta-one = SigLIP-so400m + Llama-3.1-8B
CAPTIONERS = {
    "florence-2-large": CaptionerSpec("florence-community/Florence-2-large", "florence2", 0.77,
                                      "detailed paragraphs, fast; MIT"),
    "florence-2-base": CaptionerSpec("florence-community/Florence-2-base", "florence2", 0.23,
                                     "smaller and faster, a little less accurate; MIT"),
    "blip-large": CaptionerSpec("Salesforce/blip-image-captioning-large", "blip", 0.47,
                                "one short sentence, fastest; BSD-3"),
    "qwen2.5-vl-7b": CaptionerSpec("Qwen/Qwen2.5-VL-7B-Instruct", "vlm", 8.3,
                                   "follows instructions (e.g. 'mention the trigger word'); Apache-2.0"),
    "qwen2.5-vl-3b": CaptionerSpec("Qwen/Qwen2.5-VL-3B-Instruct", "vlm", 3.8, "smaller Qwen2.5-VL"),
    "joycaption-beta-one": CaptionerSpec("fancyfeast/llama-joycaption-beta-one-hf-llava", "vlm", 8.5,
                                         "anime/NSFW-aware long captions; Llama 3.1 licence"),
}
DEFAULT_CAPTIONER = "florence-2-large"
FLORENCE_TASK = "<MORE_DETAILED_CAPTION>"
DEFAULT_PROMPT = "Write a one-sentence caption for this image. Describe only the main subject and what it is doing."
# rough activation memory per image in a batch (GB at 16-bit): beams and image tokens dominate
ACTIVATION_GB_PER_IMAGE = {"florence2": 0.35, "blip": 0.1, "vlm": 0.8}


class CaptionerError(RuntimeError):
    """The captioner cannot be loaded or run; the message says what to do."""


@dataclass
class CaptionerConfig:
    """Which natural-language captioner runs, and how."""

    format_version: ClassVar[int] = 1

    model: str = option(DEFAULT_CAPTIONER, help="captioner: " + ", ".join(CAPTIONERS) + "; or a Hub repo id / "
                        "local folder of a Florence-2, BLIP or image-text-to-text chat model")
    prompt: str = option(DEFAULT_PROMPT, help="what chat VLMs (Qwen2.5-VL, JoyCaption) are asked; Florence-2 uses "
                         "its task token instead, BLIP continues this text only if 'blip prefix' is set",
                         kind="multiline")
    florence_task: Literal["<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"] = option(
        FLORENCE_TASK, help="Florence-2 task: one line, a few sentences, or a paragraph")
    blip_prefix: str = option("", help="text BLIP's caption continues, e.g. 'a photograph of'", group="advanced")
    remove_mood: bool = option(False, help="cut Florence's closing 'The overall mood ...' sentences")
    max_new_tokens: int = option(256, help="longest caption, in tokens", min=8, max=2048)
    num_beams: int = option(3, help="beam search width (Florence-2/BLIP; 1 = greedy)", min=1, max=8,
                            group="advanced")
    batch_size: int = option(8, help="images per generate call", min=1, max=128)
    skip_captioned: bool = option(True, help="skip images that already have a caption from this captioner")
    source_name: str = option("", help="name the captions are stored under (default: the model's name)",
                              group="advanced")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = option(
        "auto", help="auto: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on the CPU", group="advanced")
    device: Literal["auto", "cuda", "cpu"] = option("auto", help="auto: the GPU when there is one",
                                                    group="advanced")
    workers: int = option(0, help="threads decoding images ahead of the model (0: one per core, up to 8)",
                          min=0, max=64, group="advanced")
    max_pixels: int = option(1280 * 28 * 28, help="Qwen-VL image size cap (pixels): bounds image tokens, hence "
                             "VRAM", min=4 * 28 * 28, group="advanced")


# ---------------------------------------------------------------------------------------------- choosing, sizing
def resolve_captioner(model: str) -> tuple[str, Family, float | None]:
    """(repo id or folder, family, parameter count in billions if known) for a name, repo id or folder."""
    if model in CAPTIONERS:
        spec = CAPTIONERS[model]
        return spec.repo, spec.family, spec.params_billion
    for spec in CAPTIONERS.values():
        if spec.repo == model:
            return spec.repo, spec.family, spec.params_billion
    folder = Path(model).expanduser()
    if folder.is_dir():
        try:
            model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type", "")
        except (OSError, ValueError):
            raise CaptionerError(f"{folder}: no readable config.json; is this a transformers model folder?") from None
        family: Family = "florence2" if model_type == "florence2" else "blip" if model_type == "blip" else "vlm"
        return str(folder), family, None
    if model.count("/") == 1:
        lowered = model.lower()
        family = "florence2" if "florence" in lowered else "blip" if "blip" in lowered else "vlm"
        return model, family, None
    raise CaptionerError(f"unknown captioner {model!r}: use one of {', '.join(CAPTIONERS)}, a Hub repo id "
                         "(owner/name) or a local model folder")


def pick_device(device: str) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise CaptionerError("device 'cuda' asked for, but torch sees no GPU (check `nvidia-smi` and that torch is "
                             "a CUDA build); use device 'cpu' or 'auto'")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def estimate_vram_gb(params_billion: float, family: Family, bytes_per_param: int, batch_size: int) -> float:
    """Weights plus 20 % runtime overhead plus activations per batched image (an estimate, in GB)."""
    weights = params_billion * bytes_per_param
    return weights * 1.2 + ACTIVATION_GB_PER_IMAGE[family] * batch_size * bytes_per_param / 2


def describe_vram(model: str, batch_size: int = 8, dtype: str = "auto", device: str = "auto") -> str:
    """One line: the captioner, its estimated VRAM at this batch size, and the GPU's free memory."""
    import torch

    source, family, params = resolve_captioner(model)
    dev = pick_device(device)
    bytes_per_param = pick_dtype(dtype, dev).itemsize
    if params is None:
        need = "unknown size (a custom model)"
    else:
        need = f"needs about {estimate_vram_gb(params, family, bytes_per_param, batch_size):.1f} GB"
    if dev == "cuda":
        free, total = torch.cuda.mem_get_info()
        where = f"GPU has {free / 2**30:.1f} of {total / 2**30:.1f} GB free"
    else:
        where = "running on the CPU (slow: minutes per image for large models)"
    return f"{model} ({family}, {source}): {need} at batch {batch_size}, {bytes_per_param * 8}-bit; {where}"


# ------------------------------------------------------------------------------------------------------- loading
@dataclass
class Captioner:
    name: str
    family: Family
    model: object
    processor: object
    device: str
    dtype: object


def load_captioner(model: str, cache_dir: str | os.PathLike | None = None, device: str = "auto",
                   dtype: str = "auto", max_pixels: int | None = None) -> Captioner:
    """Load a captioner (downloading it into ``cache_dir`` the first time) onto ``device`` in ``dtype``."""
    import transformers

    source, family, _ = resolve_captioner(model)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    model_cls = {"florence2": transformers.Florence2ForConditionalGeneration,
                 "blip": transformers.BlipForConditionalGeneration,
                 "vlm": transformers.AutoModelForImageTextToText}[family]
    try:
        processor = transformers.AutoProcessor.from_pretrained(source, cache_dir=cache_dir)
        net = model_cls.from_pretrained(source, cache_dir=cache_dir, dtype=torch_dtype)
    except OSError as exc:
        raise CaptionerError(f"could not load {source}: {str(exc).rstrip('.')}. Check the name and your connection (offline "
                             "machines need the model copied into the workspace cache first)") from exc
    if family == "vlm":
        processor.tokenizer.padding_side = "left"  # decoder-only generation continues from the right end
        cap_image_pixels(processor, max_pixels)
    net.to(dev).eval()
    name = Path(source).name if Path(source).is_dir() else source.split("/")[-1].lower()
    return Captioner(name if model not in CAPTIONERS else model, family, net, processor, dev, torch_dtype)


def cap_image_pixels(processor, max_pixels: int | None) -> bool:
    """Qwen-VL processors: resize images to at most ``max_pixels`` (image tokens, hence VRAM, grow with pixels)."""
    image_processor = getattr(processor, "image_processor", None)
    if not max_pixels or not type(image_processor).__name__.startswith("Qwen"):
        return False
    image_processor.size = {**dict(image_processor.size), "longest_edge": int(max_pixels)}
    return True


# ------------------------------------------------------------------------------------------------------ generate
def clean_caption(text: str, remove_mood: bool = False) -> str:
    """One line of caption text; with ``remove_mood``, Florence's "The overall ..." tail is cut (as kohya does)."""
    text = " ".join(text.replace("<pad>", " ").split())
    if remove_mood:
        text = re.split(r"\s*\bThe overall\b", text, maxsplit=1)[0].strip()
    return text


def build_inputs(captioner: Captioner, images: list[Image.Image], cfg: CaptionerConfig):
    """Processor outputs for one batch, on the captioner's device and dtype."""
    proc = captioner.processor
    if captioner.family == "florence2":
        inputs = proc(text=[cfg.florence_task] * len(images), images=images, return_tensors="pt", padding=True)
    elif captioner.family == "blip":
        text = [cfg.blip_prefix] * len(images) if cfg.blip_prefix else None
        inputs = proc(images=images, text=text, return_tensors="pt")
    else:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": cfg.prompt}]}]
        prompt = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = proc(text=[prompt] * len(images), images=images, return_tensors="pt", padding=True)
    inputs = inputs.to(captioner.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(captioner.dtype)
    return inputs


def generate_captions(captioner: Captioner, images: list[Image.Image], cfg: CaptionerConfig) -> list[str]:
    """Captions for a batch of RGB images."""
    import torch

    inputs = build_inputs(captioner, images, cfg)
    beams = cfg.num_beams if captioner.family != "vlm" else 1
    with torch.inference_mode():
        out = captioner.model.generate(**inputs, max_new_tokens=cfg.max_new_tokens, num_beams=beams,
                                       do_sample=False)
    proc = captioner.processor
    if captioner.family == "florence2":
        texts = proc.batch_decode(out, skip_special_tokens=False)
        texts = [proc.post_process_generation(t, task=cfg.florence_task, image_size=im.size)[cfg.florence_task]
                 for t, im in zip(texts, images, strict=True)]
    elif captioner.family == "blip":
        texts = proc.batch_decode(out, skip_special_tokens=True)
    else:
        texts = proc.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [clean_caption(t, cfg.remove_mood) for t in texts]


# -------------------------------------------------------------------------------------------------- datasets
@dataclass
class CaptioningReport:
    captioner: str
    device: str
    captioned: int = 0
    skipped: int = 0
    images_per_second: float = 0.0
    problems: dict[Path, str] = field(default_factory=dict)
    edit: object = None

    def summary(self) -> dict[str, object]:
        out = {"captioner": self.captioner, "device": self.device, "captioned": self.captioned,
               "skipped": self.skipped, "images_per_second": round(self.images_per_second, 3),
               "problems": len(self.problems)}
        if self.edit is not None:
            out["undo"] = [str(p) for p in self.edit.backup_dirs]
        return out


def caption_dataset(folder: str | os.PathLike, cfg: CaptionerConfig, cache_dir: str | os.PathLike | None = None,
                    render=None, progress: bool = True, captioner: Captioner | None = None) -> CaptioningReport:
    """Caption every image under ``folder`` into its record (under the captioner's name), then render ``.txt``."""
    from tqdm.auto import tqdm

    if captioner is None:
        captioner = load_captioner(cfg.model, cache_dir, cfg.device, cfg.dtype, cfg.max_pixels)
    source = cfg.source_name.strip() or captioner.name
    images = list_images(folder)
    records, problems = sidecar.load_records(images)
    todo = [p for p in images if p in records and not (cfg.skip_captioned and source in records[p].captions)]
    report = CaptioningReport(source, captioner.device, skipped=len(records) - len(todo), problems=problems)
    writer = sidecar.EditWriter(render)
    started = time.perf_counter()
    with tqdm(total=len(todo), desc=f"captioning ({source})", unit="img", disable=not progress) as bar:
        for start, (batch, pictures) in zip(range(0, len(todo), cfg.batch_size),
                                            iter_batches(todo, cfg.batch_size, lambda im: im, problems, cfg.workers
                                                         or None), strict=True):
            if batch:
                for path, text in zip(batch, generate_captions(captioner, pictures, cfg), strict=True):
                    record = records[path].copy()
                    record.set_caption(source, text)
                    record.sources[f"caption:{source}"] = captioner.name
                    writer.add(path, record)
            bar.update(len(todo[start:start + cfg.batch_size]))
    elapsed = time.perf_counter() - started
    writer.flush()
    report.captioned = writer.count
    report.images_per_second = writer.count / elapsed if elapsed > 0 else 0.0
    report.edit = writer if writer.edits else None
    report.problems.update(writer.problems)
    return report
