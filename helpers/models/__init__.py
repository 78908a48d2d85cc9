"""Model I/O for SDXL and SD 1.5: read any checkpoint layout, convert names, save, load for training.

- ``checkpoint``: ``open_checkpoint`` (lazy, layout-independent reader) and ``detect_architecture``;
- ``keymap``: pure name mapping diffusers/HF <-> original single-file layout (incl. U-Net module paths);
- ``tiny``: tiny random-weight pipelines with the real topology, for the demo and tests.
"""

from .checkpoint import Checkpoint, CheckpointError, detect_architecture, open_checkpoint

__all__ = ["Checkpoint", "CheckpointError", "detect_architecture", "open_checkpoint"]
