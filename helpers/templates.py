"""Training presets in ``templates/*.toml``: find them, read them, apply them over a config's defaults.

A template lists only what differs from the defaults, each value with a one-line reason comment, plus a
``format_version``; ``helpers.config.build_config`` layers defaults -> template -> user edits and migrates
older formats through the config class's ``migrate`` hook.
"""

from __future__ import annotations

import os
from pathlib import Path

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


def list_templates() -> list[str]:
    """Names of the shipped templates (file stems)."""
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.toml"))


def template_path(template: str | os.PathLike) -> Path:
    """A template name (``sdxl_finetune_a6000``) or a path to a TOML file."""
    path = Path(template)
    if path.suffix == ".toml" and path.exists():
        return path
    candidate = TEMPLATES_DIR / f"{template}.toml"
    if candidate.exists():
        return candidate
    raise FileNotFoundError(f"no template {str(template)!r}: choose one of {', '.join(list_templates())} "
                            f"or give a path to a .toml file")


def template_description(template: str | os.PathLike) -> str:
    """The leading comment block of a template file (what it is for)."""
    lines = []
    for line in template_path(template).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return " ".join(lines).strip()


# the smallest card each GPU template is for (GB), largest first: full fine-tunes from 40 GB, adapters below
TEMPLATE_BY_VRAM = ((70, "sdxl_finetune_a100"), (40, "sdxl_finetune_a6000"), (14, "sdxl_lora_24gb"), (0, "sd15_lora"))


def template_for_vram(vram_gb: float | None) -> str:
    """The shipped template that fits a GPU with ``vram_gb`` GiB: a full SDXL fine-tune from 40 GB (A6000 48 GB,
    A100 80 GB), below that an adapter (SDXL LoRA rank 32 at 1024² fits 24 GB and, by the pre-flight, 16 GB;
    the SD 1.5 LoRA under that), the tiny demo without a GPU (None)."""
    if vram_gb is None:
        return "demo_tiny"
    return next(name for smallest, name in TEMPLATE_BY_VRAM if vram_gb >= smallest)
