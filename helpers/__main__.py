"""``python -m helpers demo`` runs the pipeline on a tiny model; ``python -m helpers env`` prints the report."""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers", description="tunebook command line")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_demo = sub.add_parser("demo", help="run every stage end to end on a tiny offline model (CPU, minutes)")
    p_demo.add_argument("--workspace", help="demo workspace folder (default: a sibling '-demo' of the workspace)")
    p_demo.add_argument("--stage", action="append", help="run only this stage (repeatable)")
    sub.add_parser("env", help="print the environment report")
    args = parser.parse_args(argv)
    if args.cmd == "demo":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never needs the network
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(1)  # tiny models: one thread is faster than two here
        from helpers.demo import run_demo

        run_demo(args.workspace, args.stage)
    else:
        from helpers.environment import format_report, probe_environment

        print(format_report(probe_environment()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
