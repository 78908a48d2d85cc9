"""Full fine-tuning of SDXL and SD 1.5: data, objective, loop, checkpoints and exact resume.

Runs as a child process (``python -m helpers.training RUN.toml [--resume latest]``); the notebook only starts,
watches (``log.jsonl``, ``status.json`` in the run folder), stops and resumes it. The demo step
(``helpers.training.demo``) trains the tiny demo model for a few steps.
"""

