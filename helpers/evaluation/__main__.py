"""Command line: evaluate a run, write its model card, upload it.

    python -m helpers.evaluation run RUN [--strengths 0,0.5,1] [--checkpoints "epoch 2,final"] [--lora FILE]
                                          [--images-per-prompt 4] [--encoder clip|siglip] [--no-dino]
                                          [--faces auto|on|off] [--device auto] [--allow-changed-dataset] [--demo]
    python -m helpers.evaluation card RUN [--target hub|civitai]
    python -m helpers.evaluation upload RUN --repo NAME [--public] [--overwrite]

``run`` prints the recommendation and the report's path; ``--demo`` evaluates with the demo's tiny models (a demo
workspace). ``upload`` is private unless ``--public`` and resumable (run it again after a failure); the token is
the one 00_setup stored (or ``HF_TOKEN``), never printed. Exit status 0 done, 2 could not (the message says why).
"""

from __future__ import annotations

import argparse
import sys


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: strengths are numbers separated by commas, e.g. 0,0.5,1") from None


def main(argv: list[str] | None = None) -> int:
    from helpers.evaluation import EvalSettings, EvaluationError, evaluate_run, upload_evaluated, write_model_card
    from helpers.generation.pipeline import GenerationError
    from helpers.hub.upload import HubUploadError
    from helpers.workspace import Workspace

    parser = argparse.ArgumentParser(prog="python -m helpers.evaluation", description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", help="workspace root (default: TUNEBOOK_WORKSPACE or the platform default)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="grids, metrics, recommendation, report.html")
    run.add_argument("run")
    run.add_argument("--checkpoints", help="comma-separated checkpoint labels/files (default: all)")
    run.add_argument("--strengths", type=_floats, help="LoRA strengths (default: 0,0.5,1)")
    run.add_argument("--lora", help="the LoRA of the final checkpoint (default: exports/<run>-e<epoch>*.safetensors)")
    run.add_argument("--images-per-prompt", type=int)
    run.add_argument("--triggers", help="comma-separated trigger words (default: the dataset's trigger check)")
    run.add_argument("--encoder", choices=["clip", "siglip"])
    run.add_argument("--encoder-path", help="a local encoder folder or Hub id")
    run.add_argument("--no-dino", action="store_true", help="skip DINOv2 image similarity")
    run.add_argument("--faces", choices=["auto", "on", "off"])
    run.add_argument("--device", help="auto, cuda or cpu")
    run.add_argument("--allow-changed-dataset", action="store_true", help="evaluate against the dataset as it is "
                     "now even though it changed since training")
    run.add_argument("--demo", action="store_true", help="the demo's tiny encoders and small grids")
    card = sub.add_parser("card", help="write the model card from the last evaluation")
    card.add_argument("run")
    card.add_argument("--target", choices=["hub", "civitai"], default="hub")
    up = sub.add_parser("upload", help="upload the evaluated run (private by default, resumable)")
    up.add_argument("run")
    up.add_argument("--repo", required=True, help="owner/name, or name (under your user)")
    up.add_argument("--public", action="store_true")
    up.add_argument("--overwrite", action="store_true", help="upload into a repo that holds another run's files")
    up.add_argument("--endpoint", help="another Hub endpoint (default: huggingface.co)")
    args = parser.parse_args(argv)
    try:
        ws = Workspace.open(args.workspace, create=False)
        if args.cmd == "run":
            changes = {k: v for k, v in {
                "checkpoints": args.checkpoints.split(",") if args.checkpoints else None, "strengths": args.strengths,
                "images_per_prompt": args.images_per_prompt, "encoder": args.encoder,
                "encoder_path": args.encoder_path, "faces": args.faces, "device": args.device,
                "triggers": args.triggers.split(",") if args.triggers else None,
                "dino": False if args.no_dino else None}.items() if v is not None}
            if args.demo:
                from helpers.evaluation.demo import demo_settings

                settings = demo_settings(ws, **changes)
            else:
                settings = EvalSettings(**changes)
            evaluation = evaluate_run(ws, args.run, settings, lora=args.lora,
                                      allow_changed_dataset=args.allow_changed_dataset)
            for note in evaluation.notes:
                print(f"note: {note}")
            if evaluation.recommendation:
                print(f"recommended: {evaluation.recommendation.sentence}")
            print(f"report: {evaluation.report_path}")
        elif args.cmd == "card":
            print(write_model_card(ws, args.run, None, target=args.target))
        else:
            done = upload_evaluated(ws, args.run, args.repo, private=not args.public, overwrite=args.overwrite,
                                    endpoint=args.endpoint)
            print(done.summary())
    except (EvaluationError, GenerationError, HubUploadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
