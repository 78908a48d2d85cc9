"""Model I/O for SDXL and SD 1.5: read any checkpoint layout, convert names, save, load for training.

- ``checkpoint``: ``open_checkpoint`` (lazy, layout-independent reader) and ``detect_architecture``;
- ``keymap``: pure name mapping diffusers/HF <-> original single-file layout (incl. U-Net module paths);
- ``export``: ``save_single_file`` (original layout + modelspec metadata, atomic, streaming), ``save_diffusers``;
- ``loader``: ``load_model`` -> ``ModelBundle`` from a single file, a diffusers folder or a Hub repo id;
- ``tiny``: tiny random-weight pipelines with the real topology, for the demo and tests.

``python -m helpers.models --help`` inspects and converts models from the command line.
"""

from .checkpoint import Checkpoint, CheckpointError, detect_architecture, open_checkpoint
from .export import DiskSpaceError, save_diffusers, save_single_file
from .loader import ModelBundle, load_component, load_model

__all__ = ["Checkpoint", "CheckpointError", "DiskSpaceError", "ModelBundle", "detect_architecture", "load_component",
           "load_model", "open_checkpoint", "save_diffusers", "save_single_file"]
