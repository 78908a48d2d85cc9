"""tunebook's helper library: every notebook is a thin page over these modules.

Modules are named after pipeline stages (``download``, ``dataset``, ``captions``, ``captioning``,
``training``, ``lora``, ``evaluation``) plus the spine they share (``config``, ``templates``, ``workspace``,
``environment``, ``hub``, ``models``, ``ui``). Every stage also has a command line:
``python -m helpers.<stage> ...``; ``python -m helpers demo`` runs the whole pipeline on a tiny model.
"""

__version__ = "0.1.0"
