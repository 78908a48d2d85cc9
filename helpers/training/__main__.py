"""Command line: ``python -m helpers.training RUN.toml [--resume latest|STATE_DIR]``.

Trains the run described by RUN.toml into its run folder (the TOML's folder, or ``--run-dir``); also works
under ``accelerate launch -m helpers.training RUN.toml`` for several GPUs. Exit status: 0 done,
2 bad config/data/model (message says what to fix), 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.training", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the run's TOML (a saved TrainConfig, e.g. runs/<name>/config.toml)")
    parser.add_argument("--resume", metavar="STATE", help="'latest' = newest state in the run folder, or a "
                        "state folder")
    parser.add_argument("--run-dir", help="run folder (default: the folder of the config file)")
    parser.add_argument("--workspace", help="workspace root for model/dataset names (default: "
                        "TUNEBOOK_WORKSPACE or the platform default)")
    parser.add_argument("--check", action="store_true", help="validate config and dataset, then exit")
    parser.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                        help="progress bar (auto = when attached to a terminal)")
    args = parser.parse_args(argv)

    from helpers.config import ConfigError, load_config, save_config, validate
    from helpers.models import CheckpointError, DiskSpaceError
    from helpers.training import interrupt
    from helpers.training.checkpoints import SaveError
    from helpers.training.config import TrainConfig
    from helpers.training.data import DataError
    from helpers.training.loop import TrainingError, resolve_dataset, train
    from helpers.workspace import RunPaths, Workspace

    config_path = Path(args.config)
    try:
        cfg = load_config(TrainConfig, config_path)
        problems = validate(cfg)
        if problems:
            raise ConfigError(problems, str(config_path))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir) if args.run_dir else config_path.resolve().parent
    ws_root = args.workspace or os.environ.get("TUNEBOOK_WORKSPACE")
    ws = Workspace.open(ws_root) if ws_root else None
    if args.check:
        from helpers.dataset.caption_files import CaptionError
        from helpers.training.captions import build_caption_pipeline
        from helpers.training.data import scan_dataset
        from helpers.training.implications import ImplicationError

        try:
            models_dir = ws.models if ws else None
            items, report = scan_dataset(resolve_dataset(cfg.data.dataset, models_dir),
                                         caption_extension=cfg.data.caption_extension,
                                         default_repeats=cfg.data.repeats, on_bad_data=cfg.data.on_bad_data)
            # the caption records (when mixing) and the implications file are read as training will read them
            build_caption_pipeline(cfg.captions, [i.path for i in items], [i.caption for i in items])
        except (DataError, CaptionError, ImplicationError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(report.summary())
        return 0
    run = RunPaths(run_dir)
    if config_path.resolve() != run.config.resolve():
        save_config(cfg, run.config)  # the run folder always holds what it ran with
    show = {"auto": None, "on": True, "off": False}[args.progress]
    interrupt.install()  # SIGTERM / Ctrl-C: finish the step, save state, exit 0
    try:
        result = train(cfg, run_dir, resume=args.resume, models_dir=ws.models if ws else None,
                       cache_dir=ws.cache if ws else None, show_progress=show)
    except interrupt.StopRequested as exc:
        print(f"stopped ({exc}): nothing was trained, nothing to save")
        return 0
    except (DataError, TrainingError, SaveError, CheckpointError, DiskSpaceError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":  # one line, not one per GPU process
        return 0
    if result.get("stopped"):
        print(f"stopped by {result['stopped']} at step {result['steps']}: state saved; continue with "
              f"--resume latest")
    else:
        print(f"done: {result['steps']} steps, model: {result['final']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
