"""Command line: ``python -m helpers.training RUN.toml [--resume latest|STATE_DIR] [--dry-run [--json]]``.

Trains the run described by RUN.toml into its run folder (the TOML's folder, or ``--run-dir``); also works
under ``accelerate launch -m helpers.training RUN.toml`` for several GPUs. ``--dry-run`` checks instead of
training: config, dataset, base model, VRAM (which of 24/48/80 GB), steps, time, cost (``--price`` per hour),
disk (``training.dryrun``); ``--gpu NAME`` / ``--gpus N`` estimate for a machine you have not rented yet.
``--gpus N`` without ``--dry-run`` trains on N GPUs (``accelerate launch``; N gloo processes on a CPU), ``--fsdp``
shards a full fine-tune with the shipped FSDP config (``--zero2``: DeepSpeed ZeRO-2, optimizer state and
gradients sharded), ``--num-machines`` / ``--machine-rank`` /
``--main-process-ip`` span several machines (``training.launch``).
SIGTERM or Ctrl-C while training: the step finishes, state is saved, exit 0 (resume with ``--resume latest``).
Exit status: 0 done (dry run: it would start), 2 bad config/data/model (message says what to fix; dry run: it
would not start), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.training", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the run's TOML (a saved TrainConfig, e.g. runs/<name>/config.toml)")
    parser.add_argument("--resume", metavar="STATE", help="'latest' = newest state in the run folder, or a "
                        "state folder")
    parser.add_argument("--run-dir", help="run folder (default: the folder of the config file)")
    parser.add_argument("--workspace", help="workspace root for model/dataset names (default: "
                        "TUNEBOOK_WORKSPACE or the platform default)")
    parser.add_argument("--check", action="store_true", help="validate config and dataset, then exit")
    parser.add_argument("--dry-run", action="store_true", help="pre-flight only: VRAM, steps, time, cost, disk, "
                        "errors; exit 0 when the run would start, 2 when not")
    parser.add_argument("--json", action="store_true", help="with --dry-run: print the report as JSON")
    parser.add_argument("--gpu", help="with --dry-run: estimate for this GPU (e.g. A6000, A100, 'H100 80GB') "
                        "instead of this machine's")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs on this machine, one process each (data parallel; "
                        "a CPU machine starts this many gloo processes); with --dry-run: the GPUs to estimate for")
    parser.add_argument("--fsdp", action="store_true", help="shard weights, gradients and optimizer state over the "
                        "GPUs (accelerate FSDP, templates/accelerate/fsdp_sdxl.yaml; CUDA only)")
    parser.add_argument("--zero2", action="store_true", help="shard optimizer state and gradients over the GPUs, "
                        "weights replicated (DeepSpeed ZeRO-2, templates/accelerate/deepspeed_zero2.yaml; a full "
                        "fine-tune with AdamW/ADOPT; N CPU processes over gloo without CUDA)")
    parser.add_argument("--num-machines", type=int, default=1, help="machines in the run (each runs this command)")
    parser.add_argument("--machine-rank", type=int, default=0, help="this machine's number, 0 on the first")
    parser.add_argument("--main-process-ip", help="address of machine 0 that the others reach (several machines)")
    parser.add_argument("--main-process-port", type=int, default=29500, help="its port (default 29500)")
    parser.add_argument("--price", type=float, help="with --dry-run: the machine's price per hour, for the cost")
    parser.add_argument("--stop-instance-when-done", action="store_true",
                        help="stop this rented machine (vastai / runpodctl) when training ends; off by default")
    parser.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                        help="progress bar (auto = when attached to a terminal)")
    return parser.parse_args(argv)


def dry_run(config_path: Path, ws, args) -> int:
    """Print the pre-flight (text or JSON); a config that does not even load is a report with its errors."""
    from helpers.config import ConfigError, load_config
    from helpers.training.config import TrainConfig
    from helpers.training.dryrun import dry_run_report, exit_code, format_report

    try:
        cfg = load_config(TrainConfig, config_path)
    except (ConfigError, FileNotFoundError) as exc:
        report = {"would_start": False, "errors": str(exc).splitlines(), "warnings": []}
        print(json.dumps(report, indent=1) if args.json else f"error: {exc}", file=sys.stdout if args.json
              else sys.stderr)
        return 2
    report = dry_run_report(cfg, ws, gpu=args.gpu, gpus=max(1, args.gpus), price=args.price,
                            run_dir=Path(args.run_dir) if args.run_dir else config_path.resolve().parent)
    print(json.dumps(report, indent=1, ensure_ascii=False) if args.json else format_report(report))
    return exit_code(report)


def check_data(cfg, ws) -> int:
    from helpers.config import ConfigError
    from helpers.dataset.caption_files import CaptionError
    from helpers.training.captions import build_caption_pipeline
    from helpers.training.data import DataError, scan_dataset
    from helpers.training.implications import ImplicationError
    from helpers.training.loop import resolve_dataset
    from helpers.training.validation import held_out_of

    try:
        models_dir = ws.models if ws else None
        root = resolve_dataset(cfg.data.dataset, models_dir)
        held_out = held_out_of(cfg, root)
        items, report = scan_dataset(root, caption_extension=cfg.data.caption_extension, exclude=frozenset(held_out),
                                     default_repeats=cfg.data.repeats, on_bad_data=cfg.data.on_bad_data)
        # the caption records (when mixing) and the implications file are read as training will read them
        build_caption_pipeline(cfg.captions, [i.path for i in items], [i.caption for i in items])
    except (DataError, CaptionError, ImplicationError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def write_preflight(run, cfg, ws) -> None:
    """The estimate the run starts with, in ``preflight.json`` (the monitor's speed watch and disk warnings read
    it); its problems are printed, and nothing here ever stops training."""
    from helpers.changes import write_text_atomic
    from helpers.training.dryrun import dry_run_report

    try:
        report = dry_run_report(cfg, ws, gpus=int(os.environ.get("WORLD_SIZE", "1")), run_dir=run.root)
        write_text_atomic(run.preflight, json.dumps(report, indent=1, ensure_ascii=False))
    except Exception as exc:  # an estimate must never cost the run
        print(f"warning: no pre-flight estimate ({type(exc).__name__}: {exc})", file=sys.stderr)
        return
    for message in report["errors"] + [w for w in report["warnings"] if w.startswith("disk")]:
        print(f"pre-flight: {message}", file=sys.stderr)


def write_summary(run, result: dict) -> None:
    """``summary.json``: what the run did and what it cost so far (every start of it, from the cost ledger)."""
    from helpers import ledger
    from helpers.changes import write_text_atomic

    hours = ledger.stage_hours(run.root, "training", detail=run.name)
    summary = {"run": run.name, "steps": result["steps"], "final_model": result.get("final"),
               "stopped": result.get("stopped"), "ended": time.time(), "training_hours": hours,
               "cost": ledger.run_cost_line(run.root, hours) if ledger.find_workspace_root(run.root) else None}
    write_text_atomic(run.summary, json.dumps(summary, indent=1))


def run_training(cfg, config_path: Path, run_dir: Path, ws, args) -> int:
    """Train (the process handles SIGTERM politely), then write the run's summary; 0 also when stopped."""
    from helpers import ledger
    from helpers.config import ConfigError, save_config
    from helpers.models import CheckpointError, DiskSpaceError
    from helpers.training import interrupt
    from helpers.training.checkpoints import SaveError
    from helpers.training.data import DataError
    from helpers.training.loop import TrainingError, train
    from helpers.workspace import RunPaths

    run = RunPaths(run_dir)
    if config_path.resolve() != run.config.resolve():
        save_config(cfg, run.config)  # the run folder always holds what it ran with
    show = {"auto": None, "on": True, "off": False}[args.progress]
    if os.environ.get("RANK", "0") == "0":
        write_preflight(run, cfg, ws)
    interrupt.install()  # SIGTERM / Ctrl-C: finish the step, save state, exit 0
    main_process = os.environ.get("RANK", "0") == "0"
    try:
        with ledger.stage(run.root if main_process else None, "training", detail=run.name):  # paid time
            result = train(cfg, run_dir, resume=args.resume, models_dir=ws.models if ws else None,
                           cache_dir=ws.cache if ws else None, show_progress=show)
    except interrupt.StopRequested as exc:
        print(f"stopped ({exc}): nothing was trained, nothing to save")
        return 0
    except (DataError, TrainingError, SaveError, CheckpointError, DiskSpaceError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not main_process:  # one line, not one per GPU process
        return 0
    write_summary(run, result)
    if result.get("stopped"):  # someone (or the provider) is stopping it: not ours to stop the machine too
        print(f"stopped by {result['stopped']} at step {result['steps']}: state saved; continue with "
              f"--resume latest")
        return 0
    print(f"done: {result['steps']} steps, model: {result['final']}")
    if args.stop_instance_when_done:
        from helpers.instance import stop_instance

        stop_instance("training finished")
    return 0


LAUNCH_FLAGS = {"--gpus": 1, "--fsdp": 0, "--zero2": 0, "--num-machines": 1, "--machine-rank": 1, "--main-process-ip": 1,
                "--main-process-port": 1}


def launch(config_path: Path, args, argv: list[str]) -> int:
    """Start one trainer process per GPU (``training.launch``) with this command's other flags; their status."""
    import subprocess

    from helpers.training.launch import LaunchError, check_launch, launch_command

    rest, skip = [], 0
    for item in argv:
        if skip:
            skip -= 1
            continue
        flag = item.split("=", 1)[0]
        if flag in LAUNCH_FLAGS:
            skip = LAUNCH_FLAGS[flag] if "=" not in item else 0
            continue
        rest.append(item)
    rest.remove(args.config)
    try:
        check_launch(args.gpus, args.fsdp, zero2=args.zero2)
        cmd = launch_command(config_path, args.gpus, trainer_args=rest, fsdp=args.fsdp, zero2=args.zero2,
                             num_machines=args.num_machines, machine_rank=args.machine_rank,
                             main_process_ip=args.main_process_ip, main_process_port=args.main_process_port)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("launching: " + " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from helpers.config import ConfigError, load_config, validate
    from helpers.training.config import TrainConfig
    from helpers.training.launch import under_launcher
    from helpers.workspace import Workspace

    config_path = Path(args.config)
    ws_root = args.workspace or os.environ.get("TUNEBOOK_WORKSPACE")
    ws = Workspace.open(ws_root) if ws_root else None
    if args.dry_run:
        return dry_run(config_path, ws, args)
    try:
        cfg = load_config(TrainConfig, config_path)
        problems = validate(cfg)
        if problems:
            raise ConfigError(problems, str(config_path))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        return check_data(cfg, ws)
    if (args.gpus > 1 or args.num_machines > 1 or args.fsdp or args.zero2) and not under_launcher():
        return launch(config_path, args, argv if argv is not None else sys.argv[1:])
    run_dir = Path(args.run_dir) if args.run_dir else config_path.resolve().parent
    return run_training(cfg, config_path, run_dir, ws, args)


if __name__ == "__main__":
    raise SystemExit(main())
