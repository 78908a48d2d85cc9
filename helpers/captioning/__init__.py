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
- ``filenames``: the guide's filenames -> captions step and its reverse (notebook 02);
- ``notebook``: what notebook 03's cells call (copes with empty workspaces);
- ``demo``: the demo's caption steps (captions from filenames, then the tiny tagger).

Per image, tags and natural-language captions live apart in ``<stem>.captions.json`` and the ``.txt`` that
trainers read is rendered from them (format documented in ``sidecar``).

CLI: ``python -m helpers.captioning --help``.
"""
