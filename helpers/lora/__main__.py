"""``python -m helpers.lora extract|resize|merge|inspect``: the LoRA tools from a terminal (headless, over SSH).

Examples::

    python -m helpers.lora extract --base sd_xl_base_1.0.safetensors --tuned my-finetune.safetensors --rank 128 --out my.safetensors
    python -m helpers.lora resize --in my.safetensors --rank 16 --out my-r16.safetensors
    python -m helpers.lora resize --in my.safetensors --dynamic sv_fro:0.9 --rank 64
    python -m helpers.lora merge --base sd_xl_base_1.0.safetensors --in my-r16.safetensors --strength 0.8 --out merged.safetensors
    python -m helpers.lora inspect my-r16.safetensors --json
"""

from __future__ import annotations

import argparse
import json
import sys

from helpers.lora import svd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m helpers.lora", description=__doc__.splitlines()[0],
                                     epilog=__doc__.split("Examples::", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    ex = sub.add_parser("extract", help="LoRA from (tuned - base), with a fidelity report beside it")
    ex.add_argument("--base", required=True, help="model the fine-tune started from (.safetensors or diffusers folder)")
    ex.add_argument("--tuned", required=True, help="the fine-tuned model")
    ex.add_argument("--out", help="output .safetensors (default: beside the tuned model)")
    ex.add_argument("--rank", type=int, default=128, help="rank of linear/1x1 layers (default 128)")
    ex.add_argument("--conv-rank", type=int, default=0, help="rank of 3x3 convs (LoCon); 0 = leave them out")
    ex.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default="fp16")
    ex.add_argument("--min-diff", type=float, default=1e-6, help="skip U-Net layers changed by at most this")
    ex.add_argument("--te-min-diff", type=float, default=1e-6, help="skip text-encoder layers changed by at most this")
    ex.add_argument("--clamp-quantile", type=float, default=1.0,
                    help="sd-scripts' factor clipping (its default 0.99 costs fidelity); 1.0 = off")
    ex.add_argument("--solver", choices=list(svd.SOLVERS), default="subspace",
                    help="subspace (default): block subspace iteration, within 0.1 pp of exact; gram: Gram-matrix "
                         "eigensolver with the full spectrum; randomized: plain sketch; exact: LAPACK SVD")
    ex.add_argument("--exact", action="store_true", help="same as --solver exact (slow reference)")
    ex.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    ex.add_argument("--allow-pickle", action="store_true", help="accept .ckpt/.pt models (can run code)")
    ex.add_argument("--json", action="store_true", help="print the whole report as JSON")

    rs = sub.add_parser("resize", help="re-truncate a LoRA/LyCORIS file to a smaller (or dynamic) rank")
    rs.add_argument("--in", dest="source", required=True, help="LoRA file to resize")
    rs.add_argument("--out", help="output .safetensors (default: beside the input, named after the rank)")
    rs.add_argument("--rank", type=int, default=16, help="new rank; with --dynamic the largest allowed")
    rs.add_argument("--conv-rank", type=int, default=0, help="new rank of 3x3 convs (0 = --rank)")
    rs.add_argument("--dynamic", default="", help="sv_fro:0.9 | sv_ratio:20 | sv_cumulative:0.9")
    rs.add_argument("--precision", choices=["same", "fp16", "bf16", "fp32"], default="same")
    rs.add_argument("--device", default="auto")
    rs.add_argument("--json", action="store_true")

    mg = sub.add_parser("merge", help="bake LoRA/LyCORIS file(s) into a base -> single-file checkpoint")
    mg.add_argument("--base", required=True)
    mg.add_argument("--in", dest="loras", action="append", required=True, help="LoRA file (repeatable)")
    mg.add_argument("--out", required=True, help="output .safetensors")
    mg.add_argument("--strength", type=float, action="append", help="one per --in, or one for all (default 1)")
    mg.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default="fp16")
    mg.add_argument("--allow-pickle", action="store_true")
    mg.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    ins = sub.add_parser("inspect", help="architecture, algorithm, ranks/alphas, counts, metadata, size")
    ins.add_argument("lora", nargs="?", help="LoRA file")
    ins.add_argument("--in", dest="lora_in", help="same as the positional argument")
    ins.add_argument("--json", action="store_true")
    return parser


def format_inspection(info: dict) -> str:
    lines = [f"{info['file']}  ({info['size_bytes'] / 2**20:.1f} MiB, {info['parameters']:,} parameters, "
             f"{'/'.join(info['dtypes'])})",
             f"architecture: {info['architecture']}   algorithms: "
             + ", ".join(f"{k} x{v}" for k, v in info["algorithms"].items()),
             "modules: " + ", ".join(f"{k} {v}" for k, v in info["modules_by_component"].items())
             + f" (3x3 conv: {info['conv3x3_modules']})",
             "ranks: " + ", ".join(f"{k} x{v}" for k, v in info["ranks"].items()),
             "alphas: " + ", ".join(f"{k} x{v}" for k, v in info["alphas"].items())]
    if info["metadata"]:
        lines.append("metadata:")
        lines += [f"  {k} = {v}" for k, v in info["metadata"].items() if k != "ss_tag_frequency"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "extract":
            from helpers.lora.extract import extract_lora
            from helpers.lora.report import format_summary, report_path

            result = extract_lora(args.base, args.tuned, args.out, rank=args.rank, conv_rank=args.conv_rank,
                                  precision=args.precision, min_diff=args.min_diff, te_min_diff=args.te_min_diff,
                                  clamp_quantile=args.clamp_quantile,
                                  solver="exact" if args.exact else args.solver, device=args.device,
                                  allow_pickle=args.allow_pickle)
            print(json.dumps(result, indent=1) if args.json else
                  format_summary(result) + f"\nreport: {report_path(result['file'])}")
        elif args.cmd == "resize":
            from helpers.lora.report import format_summary
            from helpers.lora.resize import resize_lora

            result = resize_lora(args.source, args.out, rank=args.rank, conv_rank=args.conv_rank,
                                 dynamic=args.dynamic, precision=args.precision, device=args.device)
            print(json.dumps(result, indent=1) if args.json else format_summary(result))
        elif args.cmd == "merge":
            from helpers.lora.merge import merge_lora

            strengths = args.strength or [1.0]
            if len(strengths) == 1:
                strengths = strengths * len(args.loras)
            result = merge_lora(args.base, args.loras, args.out, strength=strengths, precision=args.precision,
                                allow_pickle=args.allow_pickle, overwrite=args.overwrite)
            print(f"merged {result['layers_changed']} layers into {result['file']} "
                  f"({result['size_bytes'] / 2**30:.2f} GiB, {result['precision']})")
        else:
            from helpers.lora.formats import describe_lora, read_lora

            path = args.lora or args.lora_in
            if not path:
                raise ValueError("give the LoRA file to inspect")
            info = describe_lora(read_lora(path))
            print(json.dumps(info, indent=1) if args.json else format_inspection(info))
    except (ValueError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
