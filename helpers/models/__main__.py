"""``python -m helpers.models``: inspect a model (arch, prediction, components) or convert between layouts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from helpers.models.checkpoint import human_count


def format_summary(summary: dict) -> str:
    """A few readable lines for a :func:`summarize_checkpoint` result."""
    lines = [f"{summary['path']}",
             f"  {summary['arch']}, {summary['prediction']}, {summary['layout']}, "
             f"{summary['size_bytes'] / 1024 ** 3:.2f} GiB"]
    for name, c in summary["components"].items():
        lines.append(f"  {name:5s} {c['tensors']:5d} tensors  {human_count(c['parameters']):>7s} params  "
                     f"{'/'.join(c['dtypes'])}")
    if summary["unknown_keys"]:
        lines.append(f"  ({summary['unknown_keys']} extra tensors not used by any component)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="architecture, prediction type and components of a model (headers only)")
    p.add_argument("path", help="a .safetensors file or a diffusers folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--allow-pickle", action="store_true", help="read .ckpt/.pt files (pickle can run code)")
    p = sub.add_parser("convert", help="convert a model to a single file (original layout) or a diffusers folder")
    p.add_argument("source", help="a .safetensors file, a diffusers folder, or a Hub repo id")
    p.add_argument("dest", help="output .safetensors file or folder")
    p.add_argument("--to", choices=["single_file", "diffusers"], default=None,
                   help="output layout (default: from dest, .safetensors -> single_file)")
    p.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--arch", choices=["sdxl", "sd15"], default=None, help="expected architecture (checked)")
    p.add_argument("--prediction", choices=["epsilon", "v_prediction"], default=None,
                   help="override the prediction type the source declares")
    p.add_argument("--allow-pickle", action="store_true", help="read .ckpt/.pt files (pickle can run code)")
    p.add_argument("--overwrite", action="store_true", help="replace dest (a folder is kept as DEST.previous)")
    args = parser.parse_args(argv)

    from .checkpoint import CheckpointError, open_checkpoint, summarize_checkpoint

    try:
        if args.command == "inspect":
            with open_checkpoint(args.path, allow_pickle=args.allow_pickle) as ck:
                summary = summarize_checkpoint(ck)
            print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
            return 0
        from .export import PRECISIONS, save_diffusers, save_single_file
        from .loader import load_model

        dest = Path(args.dest)
        layout = args.to or ("single_file" if dest.suffix == ".safetensors" else "diffusers")
        if dest.exists() and not args.overwrite:
            print(f"error: {dest} exists; pass --overwrite to replace it", file=sys.stderr)
            return 2
        bundle = load_model(args.source, arch=args.arch, prediction=args.prediction,
                            dtype=PRECISIONS[args.precision], allow_pickle=args.allow_pickle)
        if layout == "single_file":
            save_single_file(bundle.unet, bundle.vae, bundle.text_encoders, dest, arch=bundle.arch,
                             precision=args.precision, prediction=bundle.prediction)
        else:
            save_diffusers(bundle.unet, bundle.vae, bundle.text_encoders, bundle.tokenizers, dest, arch=bundle.arch,
                           prediction=bundle.prediction, precision=args.precision, overwrite=args.overwrite)
        print(f"wrote {dest} ({bundle.arch}, {bundle.prediction}, {args.precision}, {layout})")
        return 0
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
