"""The dataset advice steps as notebook 01 and ``python -m helpers.dataset`` run them: the composition report and
the upscale step, with models from the workspace's ``models/``, embeddings cached in its ``cache/``, and every
chart and sheet written to ``cache/dataset-advice/<dataset>/`` (the numbers also into the dataset report JSON).

Each notebook step copes with "no dataset", "no images" and "model not available" by printing what to do, so a
notebook run top to bottom never stops half way; the CLI turns the same problems into exit code 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from helpers.dataset.composition import (
    Composition,
    CompositionConfig,
    analyse_composition,
    category_sheet,
    composition_chart,
    format_composition,
    shots_chart,
    write_composition,
)
from helpers.dataset.files import list_images
from helpers.dataset.report import advice_dir, update_report_file
from helpers.dataset.upscale import (
    UpscaleConfig,
    UpscaleResult,
    format_plan,
    images_to_upscale,
    preview_upscale,
    upscale_images,
)
from helpers.models.encoders import DEFAULT_ENCODER, EncoderError, has_text_side, is_encoder_folder, load_encoder
from helpers.models.upscalers import DEFAULT_UPSCALER, UpscalerError, load_upscaler
from helpers.ui.errors import stage_failed
from helpers.workspace import Workspace

ADVICE_ERRORS = (EncoderError, UpscalerError)  # a model that cannot be fetched or read


# ---------------------------------------------------------------------------------------------- defaults
def local_encoders(models_dir: Path) -> list[str]:
    return sorted(p.name for p in models_dir.iterdir() if p.is_dir() and is_encoder_folder(p) and has_text_side(p)) \
        if models_dir.is_dir() else []


def default_composition_config(ws: Workspace) -> CompositionConfig:
    """The default encoder, or the one already in the workspace when the default is not there (offline boxes)."""
    have = local_encoders(ws.models)
    if not have or DEFAULT_ENCODER in have:
        return CompositionConfig()
    return CompositionConfig(encoder=have[0])


def local_upscalers(models_dir: Path) -> list[str]:
    suffixes = (".pth", ".safetensors")
    return sorted(str(p.relative_to(models_dir)) for p in models_dir.rglob("*") if p.suffix in suffixes
                  and "upscal" in str(p.relative_to(models_dir)).lower()) if models_dir.is_dir() else []


def default_upscale_config(ws: Workspace, resolution: int = 1024) -> UpscaleConfig:
    """The default upscaler, or one already in the workspace's models/ (a path with "upscal" in it)."""
    have = local_upscalers(ws.models)
    return UpscaleConfig(model=have[0] if have else DEFAULT_UPSCALER, resolution=resolution)


# ---------------------------------------------------------------------------------------------- composition
def compose(ws: Workspace, folder: Path, cfg: CompositionConfig, progress: bool = True) -> tuple[Composition, dict]:
    """Classify, write the charts, sheets and JSON, and add the numbers to the dataset report JSON."""
    encoder = load_encoder(cfg.encoder, ws.models, cfg.device)
    result = analyse_composition(folder, cfg, encoder, ws.cache / "embeddings", progress=progress)
    written = write_composition(result, advice_dir(ws.cache, folder))
    written["dataset report"] = str(update_report_file(folder, "composition", result.to_dict()))
    return result, written


def run_composition(ws: Workspace, folder: Path, cfg: CompositionConfig) -> Composition | None:
    """Notebook 01's composition step: prints the counts and where the pictures went (None with a message when
    it cannot run)."""
    if not folder.is_dir() or not list_images(folder):
        print(f"no images in {folder}: download a dataset above first")
        return None
    try:
        result, written = compose(ws, folder, cfg)
    except (ValueError, *ADVICE_ERRORS) as exc:
        stage_failed(f"composition not run: {exc}")
        return None
    print(format_composition(result))
    for what, where in written.items():
        print(f"{what}: {where}")
    return result


def show_composition(result: Composition | None, sheets: int = 6) -> None:
    """The bar chart, the shot chart and the contact sheets of the fullest categories."""
    from IPython.display import display

    if result is None:
        print("no composition to show")
        return
    display(composition_chart(result))
    chart = shots_chart(result)
    if chart is not None:
        display(chart)
    for name, _ in sorted(result.counts.items(), key=lambda kv: -kv[1])[:sheets]:
        sheet = category_sheet(result, name)
        if sheet is not None:
            display(sheet)


# ---------------------------------------------------------------------------------------------- upscaling
def upscale_dataset(ws: Workspace, folder: Path, cfg: UpscaleConfig, progress: bool = True) -> tuple[str, dict]:
    """List the images below the resolution; preview (default) or apply the upscale. Returns (text, written)."""
    items = images_to_upscale(folder, cfg.resolution, cfg.measure)
    text = format_plan(items, cfg.resolution)
    out = advice_dir(ws.cache, folder)
    if not items:
        return text, {}
    up = load_upscaler(cfg.model, ws.models, cfg.device)
    text += f"\nmodel: {up.description} on {up.device}"
    if not cfg.apply:
        sheet = preview_upscale(items, up, tile=cfg.tile)
        out.mkdir(parents=True, exist_ok=True)
        sheet.save(out / "upscale-preview.png")
        notes = "".join(f"\nnote: {n}" for n in dict.fromkeys(up.notes))
        return text + notes + "\npreview only: tick 'upscale now' to write them", {
            "upscale preview sheet": str(out / "upscale-preview.png")}
    result = upscale_images(items, up, root=folder, output_format=cfg.output_format, tile=cfg.tile,
                            progress=progress)
    written = _save_result(result, folder, out)
    return text + "\n" + _describe(result), written


def _save_result(result: UpscaleResult, folder: Path, out: Path) -> dict[str, str]:
    written = {}
    if result.sheet is not None:
        out.mkdir(parents=True, exist_ok=True)
        result.sheet.save(out / "upscale-before-after.png")
        written["before/after sheet"] = str(out / "upscale-before-after.png")
    numbers = {**result.summary(), "images": [[str(a.relative_to(folder)), str(b.relative_to(folder)), list(s0),
                                               list(s1)] for a, b, s0, s1 in result.upscaled],
               "failed": {str(k): v for k, v in result.failed.items()}}
    written["dataset report"] = str(update_report_file(folder, "upscale", numbers))
    return written


def _describe(result: UpscaleResult) -> str:
    lines = [f"upscaled {len(result.upscaled)} images in {result.seconds:.1f} s"]
    lines += [f"note: {n}" for n in result.notes]
    lines += [f"failed {p.name}: {why}" for p, why in result.failed.items()]
    if result.backup_dir is not None and result.upscaled:
        lines.append(f"originals kept; undo with: python -m helpers.captioning undo {result.backup_dir}")
    return "\n".join(lines)


def run_upscale(ws: Workspace, folder: Path, cfg: UpscaleConfig):
    """Notebook 01's upscale step: prints the list, then the preview or the result; shows the before/after sheet."""
    from IPython.display import display
    from PIL import Image

    if not folder.is_dir() or not list_images(folder):
        print(f"no images in {folder}: download a dataset above first")
        return None
    try:
        text, written = upscale_dataset(ws, folder, cfg)
    except (ValueError, *ADVICE_ERRORS) as exc:
        stage_failed(f"upscale not run: {exc}")
        return None
    print(text)
    for what, where in written.items():
        print(f"{what}: {where}")
        if where.endswith(".png"):
            display(Image.open(where))
    return written


# ---------------------------------------------------------------------------------------------- command line
def add_commands(sub) -> None:
    """``composition`` and ``upscale`` subcommands of ``python -m helpers.dataset``."""
    d, u = CompositionConfig(), UpscaleConfig()
    p = sub.add_parser("composition", help="zero-shot categories against the guide's list, shot types, balance")
    p.add_argument("folder", type=Path)
    p.add_argument("--preset", choices=["style", "character", "concept"], default=d.preset)
    p.add_argument("--categories", nargs="*", default=[], help="'name [person|scene]: prompt | prompt' lines")
    p.add_argument("--threshold", type=float, default=d.threshold)
    p.add_argument("--encoder", default=d.encoder)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default=d.device)
    p.add_argument("--json", action="store_true")
    p.add_argument("--workspace", help="workspace whose models/ and cache/ are used (default: the current one)")
    p = sub.add_parser("upscale", help="list images below the resolution; --apply upscales them (undoable)")
    p.add_argument("folder", type=Path)
    p.add_argument("--model", default=u.model)
    p.add_argument("--resolution", type=int, default=u.resolution)
    p.add_argument("--measure", choices=["short_side", "area"], default=u.measure)
    p.add_argument("--format", choices=["png", "same"], default=u.output_format)
    p.add_argument("--tile", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default=u.device)
    p.add_argument("--apply", action="store_true", help="write the upscaled images (default: list and preview)")
    p.add_argument("--workspace", help="workspace whose models/ and cache/ are used (default: the current one)")


def _workspace(root: str | None) -> Workspace:
    return Workspace.open(root) if root else Workspace.open()


def run_command(args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        raise FileNotFoundError(f"{args.folder}: no such dataset folder")
    ws = _workspace(args.workspace)
    if args.cmd == "composition":
        cfg = CompositionConfig(preset=args.preset, categories=args.categories, threshold=args.threshold,
                                encoder=args.encoder, device=args.device)
        result, written = compose(ws, args.folder, cfg, progress=not args.json)
        print(json.dumps({"composition": result.to_dict(), "written": written}, indent=1) if args.json
              else format_composition(result) + "".join(f"\n{k}: {v}" for k, v in written.items()))
        return 0
    cfg = UpscaleConfig(model=args.model, resolution=args.resolution, measure=args.measure, output_format=args.format,
                        tile=args.tile, device=args.device, apply=args.apply)
    text, written = upscale_dataset(ws, args.folder, cfg)
    print(text + "".join(f"\n{k}: {v}" for k, v in written.items()))
    return 0


def composition_numbers(folder: Path, workspace: str | None) -> dict[str, object]:
    """The composition with the default settings, as report JSON (``check --composition``)."""
    return compose(_workspace(workspace), folder, CompositionConfig(), progress=False)[0].to_dict()
