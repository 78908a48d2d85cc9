"""A dataset on disk: what training reads, checking and fixing it, and the report a person looks at.

- ``files``: the one definition of the layout (images, caption files, companions, kohya ``N_name`` repeat
  folders, nested folders) that the check, the trainer, captioning and downloads all use;
- ``caption_files``: caption paths, what training reads from a caption (first line), the caption change-set
  writer (backed up, atomic, undoable through ``helpers.changes``);
- ``buckets``: kohya's aspect-ratio buckets (the trainer imports them; the report shows them);
- ``check``: decode every file fully, status and reasons per file, what training will do with each image,
  duplicates;
- ``fix``: fixes, rejects moved to ``_rejected/``, kohya folder layout — all undoable;
- ``report``: the dataset report, contact sheets and charts;
- ``notebook``: what notebook 01's check cells call; ``demo``: the synthetic demo dataset.

CLI: ``python -m helpers.dataset check DIR [--json] [--fix] [--reject]``, ``layout DIR --repeats N --name X``,
``demo DIR``.
"""
