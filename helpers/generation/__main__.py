"""``python -m helpers.generation``: images from a model on the command line.

    sample MODEL -p "a cat" [-p …] [--prompt-file F] [--lora FILE[:STRENGTH]] … --out DIR
    grid   MODEL --x cfg=4,7,10 --y 'prompt="a cat, photo",a dog' [--z sampler=Euler,DDIM] --out DIR
    review MODEL --dataset DIR [--lora FILE] [--checkpoint FILE …] --out DIR
    info   IMAGE.png            (the A1111 parameters stored in a PNG)

MODEL is a .safetensors file, a diffusers folder, a Hub repo id, a run folder or a training-state folder.
Bad input exits with status 2 and a message; no half-written image is left behind.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path


def _model_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("model", help="model file, diffusers folder, Hub id, run folder or training state")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]", help="apply a LoRA/LyCORIS "
                   "file (repeatable; strength default 1)")
    p.add_argument("--unfused", action="store_true", help="apply LoRAs as extra branches instead of merging them")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--vae-dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--offload", default="none", choices=["none", "model"], help="model: keep models on the CPU "
                   "until they run (less VRAM, slower)")
    p.add_argument("--zero-terminal-snr", action="store_true", default=None, help="the model was trained with "
                   "zero-terminal SNR (default: what the checkpoint records)")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--sampler", default="Euler a")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--seed", type=int, default=-1, help="-1 = random")
    p.add_argument("--width", type=int, default=0, help="0 = the model's native size")
    p.add_argument("--height", type=int, default=0, help="0 = the model's native size")
    p.add_argument("--clip-skip", type=int, default=1)
    p.add_argument("--rescale-cfg", type=float, default=0.0)
    return p


def _settings(args, prompt: str = "", batch_size: int = 1):
    from helpers.generation.pipeline import ImageSettings

    return ImageSettings(prompt=prompt, negative_prompt=args.negative, steps=args.steps, cfg=args.cfg,
                         sampler=args.sampler, seed=args.seed, width=args.width, height=args.height,
                         batch_size=batch_size, clip_skip=args.clip_skip, rescale_cfg=args.rescale_cfg)


def _open(args, source, batch_size: int = 1):
    from helpers.generation.loras import LoraSpec
    from helpers.generation.pipeline import open_generator

    return open_generator(source, loras=[LoraSpec.parse(s) for s in args.lora], fused=not args.unfused,
                          device=args.device, dtype=args.dtype, vae_dtype=args.vae_dtype, offload=args.offload,
                          zero_terminal_snr=args.zero_terminal_snr, width=args.width, height=args.height,
                          batch_size=batch_size, echo=lambda m: print(m, file=sys.stderr))


def _next_index(folder: Path) -> int:
    numbers = [int(m.group(1)) for p in folder.glob("*.png") if (m := re.match(r"^(\d{5})-", p.name))]
    return max(numbers, default=0) + 1


def run_sample(args) -> int:
    from helpers.generation.prompts import parse_prompt_lines, read_prompts

    specs = parse_prompt_lines(args.prompt, "--prompt") + (read_prompts(args.prompt_file) if args.prompt_file else [])
    if not specs:
        print("error: give a prompt (-p TEXT) or --prompt-file FILE", file=sys.stderr)
        return 2
    out = Path(args.out)
    generator = _open(args, args.model, args.batch)
    try:
        index = _next_index(out) if out.exists() else 1
        for spec in specs:
            for image in generator.generate(replace(_settings(args, batch_size=args.batch), **spec.overrides())):
                path = image.save(out / f"{index:05d}-{image.parameters.seed}.png")
                print(path)
                index += 1
    finally:
        generator.close()
    return 0


def run_grid(args) -> int:
    from helpers.generation.grid import parse_axis, render_grid
    from helpers.generation.loras import LoraSpec

    axes = [parse_axis(a) for a in (args.x, args.y, args.z) if a]
    result = render_grid(args.model, axes, args.out, base=_settings(args, args.prompt or "", args.batch),
                         loras=[LoraSpec.parse(s) for s in args.lora], overwrite=args.overwrite,
                         batch_limit=args.batch_limit,
                         open_model=lambda src: _open(replace_lora(args), src, args.batch_limit))
    for page in result.pages:
        print(page)
    return 0


def replace_lora(args):
    """Grids apply LoRAs per cell themselves: open models without the command line's LoRAs."""
    return argparse.Namespace(**{**vars(args), "lora": []})


def run_review(args) -> int:
    from helpers.generation.loras import LoraSpec
    from helpers.generation.review import guide_review

    pages = guide_review(args.model, args.out, dataset=args.dataset, loras=[LoraSpec.parse(s) for s in args.lora],
                         checkpoints=args.checkpoint, strengths=[float(s) for s in args.strengths.split(",")],
                         base=_settings(args), overwrite=args.overwrite,
                         open_model=lambda src: _open(replace_lora(args), src, 4))
    for kind, files in pages.items():
        for page in files:
            print(f"{kind}: {page}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.generation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = _model_options()
    p = sub.add_parser("sample", parents=[common], help="images for prompts")
    p.add_argument("-p", "--prompt", action="append", default=[], help="a prompt (kohya syntax allowed; repeatable)")
    p.add_argument("--prompt-file", help="kohya-style prompt file (.txt)")
    p.add_argument("--batch", type=int, default=1, help="images per prompt")
    p = sub.add_parser("grid", parents=[common], help="an XY(Z) grid")
    for axis in ("x", "y", "z"):
        p.add_argument(f"--{axis}", required=axis == "x", help="AXIS=v1,v2,… with AXIS one of prompt, checkpoint, "
                       "strength, cfg, sampler, steps, seed (AXIS=@file.txt reads one value per line)")
    p.add_argument("--prompt", help="the prompt when no axis is 'prompt'")
    p.add_argument("--batch", type=int, default=1, help="images per cell")
    p.add_argument("--batch-limit", type=int, default=4, help="images generated at once")
    p.add_argument("--overwrite", action="store_true", help="replace a grid already in --out")
    p = sub.add_parser("review", parents=[common], help="the guide's check: captions 1:1 and generic prompts")
    p.add_argument("--dataset", help="training images with .txt captions (replayed 1:1)")
    p.add_argument("--checkpoint", action="append", default=[], help="compare these checkpoints (repeatable)")
    p.add_argument("--strengths", default="0,1", help="LoRA strengths to compare (0 = base)")
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("info", help="print the A1111 parameters stored in a PNG")
    p.add_argument("image")
    args = parser.parse_args(argv)

    from helpers.generation.grid import GridError
    from helpers.generation.pipeline import GenerationError
    from helpers.generation.prompts import PromptFileError
    from helpers.lora.formats import LoraFileError
    from helpers.models import CheckpointError

    try:
        if args.command == "info":
            from helpers.generation.parameters import read_png_parameters

            text = read_png_parameters(args.image)
            print(text if text else f"{args.image}: no A1111 parameters stored")
            return 0 if text else 1
        return {"sample": run_sample, "grid": run_grid, "review": run_review}[args.command](args)
    except (GenerationError, GridError, PromptFileError, LoraFileError, CheckpointError, FileExistsError,
            FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
