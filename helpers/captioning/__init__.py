"""Captioning a dataset: WD tagger tags, natural-language captions, booru captions, tag curation.

Submodules (import what you need; heavy libraries load lazily):

- ``tags``: tag text rules (underscores, escaping, dedupe/sort/replace, MCut), pure functions;
- ``wd_tagger``: SmilingWolf's WD taggers via onnxruntime (fetch, load, preprocess, tag a dataset);
- ``tiny_tagger``: a tiny WD-shaped ONNX tagger built offline for the demo and tests;
- ``sidecar``: per-image caption records (tags and captions kept apart) and the ``.txt`` rendered from them;
- ``booru``: Kohaku XL-style captions from gallery-dl Danbooru metadata, aesthetic-score quality tags;
- ``captioners``: Florence-2 / BLIP / VLM natural-language captions with transformers;
- ``curation``: trigger words, bulk tag edits, tag frequency table, caption editor grid;
- ``demo``: ``run_demo(ws)`` for ``python -m helpers demo``.

CLI: ``python -m helpers.captioning --help``.
"""


def run_demo(ws):
    """Tag the demo dataset with the tiny tagger and render its ``.txt`` files (see ``captioning.demo``)."""
    from helpers.captioning.demo import run_demo as _run_demo

    return _run_demo(ws)
