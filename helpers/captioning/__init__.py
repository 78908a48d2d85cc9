"""Captioning a dataset: WD tagger tags, natural-language captions, booru captions, tag curation.

Submodules (import what you need; heavy libraries load lazily):

- ``tags``: tag text rules (underscores, escaping, dedupe/sort/replace, MCut), pure functions;
- ``wd_tagger``: SmilingWolf's WD taggers via onnxruntime (fetch, load, preprocess, tag a dataset);
- ``tiny_tagger``: a tiny WD-shaped ONNX tagger built offline for the demo and tests;
- ``sidecar``: per-image caption records (tags and captions kept apart) and the ``.txt`` rendered from them;
- ``booru``: Kohaku XL-style captions from gallery-dl Danbooru metadata, aesthetic-score quality tags;
- ``captioners``: Florence-2 / BLIP / VLM natural-language captions with transformers;
- ``curation``: trigger words, remove / replace / dedupe / sort tags, the tag frequency table;
- ``editor``: notebook widgets: the caption editor grid and the tag table with bulk actions (undo buttons);
- ``images``: decoding dataset images ahead of the models in worker threads;
- ``notebook``: what notebook 03's cells call (copes with empty workspaces);
- ``demo``: ``run_demo(ws)`` for ``python -m helpers demo``.

Per image, tags and natural-language captions live apart in ``<stem>.captions.json`` and the ``.txt`` that
trainers read is rendered from them (format documented in ``sidecar``).

CLI: ``python -m helpers.captioning --help``.
"""


def run_demo(ws):
    """Tag the demo dataset with the tiny tagger and render its ``.txt`` files (see ``captioning.demo``)."""
    from helpers.captioning.demo import run_demo as _run_demo

    return _run_demo(ws)
