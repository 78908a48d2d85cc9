"""Loss masks: which pixels of a training image teach the model (white = train, black = ignore).

From the image's own alpha channel (``data.masks = "alpha"``, sd-scripts ``alpha_mask``) or from a mask image
per training image (``"folder"``: ``<dataset>/_masks/<same relative path and stem>.png``, any image format;
the ``_`` keeps the scan from taking masks for training images), as sd-scripts' ``--masked_loss`` with a
conditioning folder. A mask goes through the same resize, crop and flip as its image; the loss code averages it
down to latent size (``objective.latent_mask``).
"""

from __future__ import annotations

from pathlib import Path

import torch

MASK_EXTENSIONS = (".png", ".webp", ".jpg", ".jpeg", ".bmp")


def mask_folder_path(root: Path, folder: str) -> Path:
    """The mask folder: absolute as given, else relative to the dataset root."""
    path = Path(folder).expanduser()
    return path if path.is_absolute() else Path(root) / path


def find_mask_files(images: list[Path], root: Path, source: str, folder: str) -> tuple[list[Path], list[Path]]:
    """(mask file per image, images without one). For ``"alpha"`` the image is its own mask file."""
    if source == "alpha":
        return list(images), []
    base = mask_folder_path(root, folder)
    found, missing = [], []
    for image in images:
        stem = base / Path(image).relative_to(root).with_suffix("")
        match = next((stem.with_suffix(ext) for ext in MASK_EXTENSIONS if stem.with_suffix(ext).exists()), None)
        found.append(match)
        if match is None:
            missing.append(image)
    return found, missing


def load_mask(path: Path, resized: tuple[int, int], bucket: tuple[int, int], left: int, top: int, flip: bool,
              alpha: bool) -> torch.Tensor:
    """The mask as a (1, H, W) float tensor in [0, 1], resized/cropped/flipped like its image.

    ``alpha``: the image's alpha channel (an image without one is all 1 = train everywhere); otherwise the
    mask image's grey level.
    """
    from PIL import Image

    with Image.open(path) as im:
        if alpha:
            im = im.convert("RGBA").getchannel("A") if im.mode in ("RGBA", "LA", "PA", "P") else \
                Image.new("L", im.size, 255)
        else:
            im = im.convert("L")
        if im.size != resized:
            im = im.resize(resized, Image.Resampling.BILINEAR)
        im = im.crop((left, top, left + bucket[0], top + bucket[1]))
        if flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return data.view(1, bucket[1], bucket[0]).float().div_(255.0)
