"""The demo's model steps: the tiny SDXL base model written the two ways users have models (a diffusers folder
and an original-layout single file), then every model in the demo workspace inspected."""

from __future__ import annotations

from helpers.models.checkpoint import CheckpointError, human_count, open_checkpoint, summarize_checkpoint
from helpers.models.export import save_single_file
from helpers.models.loader import load_model
from helpers.models.tiny import save_tiny_model


def prepare_base_model(ws) -> dict[str, str]:
    """The tiny SDXL base model as a diffusers folder and as a single file (original layout)."""
    folder = ws.model("tiny-sdxl")
    if not (folder / "model_index.json").exists():
        save_tiny_model(folder, "sdxl")
    single = ws.models / "tiny-sdxl.safetensors"
    if not single.exists():
        bundle = load_model(str(folder))
        save_single_file(bundle.unet, bundle.vae, bundle.text_encoders, single, arch=bundle.arch,
                         precision="fp32", prediction=bundle.prediction)
    return {"tiny SDXL base (diffusers folder)": str(folder), "tiny SDXL base (single file)": str(single)}


def run_demo(ws) -> dict[str, str]:
    """Inspect every base model in the demo workspace (header reads only: milliseconds)."""
    out = {}
    for path in sorted(ws.models.iterdir()) if ws.models.exists() else []:
        if path.name.startswith(".") or not (path.is_dir() or path.suffix == ".safetensors"):
            continue
        try:
            with open_checkpoint(path) as ck:
                s = summarize_checkpoint(ck)
        except CheckpointError as exc:  # one unusable file must not stop the demo; say why instead
            out[f"model {path.name}"] = f"not loadable: {exc}"
            continue
        params = sum(c["parameters"] for c in s["components"].values())
        out[f"model {path.name}"] = f"{s['arch']} {s['prediction']} {s['layout']}, {human_count(params)} params"
    return out

