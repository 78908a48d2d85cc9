"""Images from SDXL / SD 1.5 models: single images, samples during training, labelled XY grids.

- ``pipeline``: ``ImageSettings``, ``ImageGenerator`` (the one place diffusers pipelines are built, over a
  ``helpers.models.ModelBundle`` loaded from disk or held by a training run) and ``open_generator``;
- ``sources``: what a model argument means (file, folder, Hub id, run folder, training state), memory estimate;
- ``loras``: LoRA / LyCORIS files applied in memory at a strength, fused or unfused, removed exactly;
- ``samplers``: A1111 sampler names -> diffusers schedulers (v-prediction, zero-terminal-SNR);
- ``prompts``: kohya-syntax prompt lines and files; ``parameters``: the A1111 PNG ``parameters`` text;
- ``grid``: XY(Z) grids over prompt, checkpoint, LoRA strength, CFG, sampler, steps, seed;
- ``review``: the guide's evaluation (training captions 1:1, generic prompts in batches of 4);
- ``training_samples``: the ``[sampling]`` section of a training run and ``maybe_sample``.

Command line: ``python -m helpers.generation sample|grid|review|info``.
"""
