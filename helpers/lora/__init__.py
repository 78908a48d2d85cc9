"""LoRA tools: extract a LoRA from a fine-tune, resize it, merge it into a base, inspect any LoRA file.

- ``extract``: ``extract_lora(base, tuned, out, rank=…)`` — streaming, per-layer, fidelity report;
- ``resize``: ``resize_lora(path, out, rank=… | dynamic="sv_fro:0.9")`` — exact, via the factors' QR;
- ``merge``: ``merge_lora(base, lora, out, strength=…)`` — bake LoRA/LoCon/LoHa/LoKr into a single file;
- ``formats``: read/write kohya-format files (``read_lora``, ``describe_lora``), ``ss_*`` metadata, hashes;
- ``naming``: which layers a LoRA targets and their sd-scripts names; ``svd``: the factorisation maths;
- ``report``: fidelity summaries, the JSON beside each LoRA, charts.

Command line: ``python -m helpers.lora extract|resize|merge|inspect``.
"""
