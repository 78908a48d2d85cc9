"""Notebook 06's library: which checkpoint and LoRA strength to publish, decided by numbers, with a memorisation
check, an offline HTML report, a model card and the upload.

- ``settings``: ``EvalSettings`` (checkpoints, strengths, prompt sets, encoders, the choosing rule's thresholds);
- ``inputs``: the run, its checkpoints and LoRAs, the base model, the dataset (changed since training?), triggers;
- ``metrics``: the formulas (CLIP score, fidelity, Vendi, memorisation, preservation, face likeness), pure, cited;
- ``run``: ``evaluate_run`` (grids through ``helpers.generation``, embeddings, scores, ``metrics.json``);
- ``choose``: the recommended checkpoint + strength and its one-sentence reason; charts over epochs/strengths;
- ``report``: ``<run>/evaluation/report.html``; ``card``: the model card (Hub / civitai);
- ``upload``: ``upload_evaluated`` (model, LoRA, card, samples through ``helpers.hub.upload``).

Command line: ``python -m helpers.evaluation run|card|upload``.
"""

from __future__ import annotations

from helpers.evaluation.run import Evaluation, Recommendation, evaluate_run, load_evaluation
from helpers.evaluation.settings import EvalSettings, EvaluationError


def write_model_card(workspace, run_name: str, evaluation=None, *, target: str = "hub"):
    """The run's model card (Markdown) for the Hub or civitai; see ``helpers.evaluation.card``."""
    from helpers.evaluation.card import write_model_card as write

    return write(workspace, run_name, evaluation, target=target)


def upload_evaluated(workspace, run_name: str, repo_id: str, *, token: str | None = None, private: bool = True,
                     overwrite: bool = False, progress=None, endpoint: str | None = None, echo=print):
    """Upload the evaluated run (model, LoRA, card, samples); see ``helpers.evaluation.upload``."""
    from helpers.evaluation.upload import upload_evaluated as upload

    return upload(workspace, run_name, repo_id, token=token, private=private, overwrite=overwrite,
                  progress=progress, endpoint=endpoint, echo=echo)


__all__ = ["EvalSettings", "Evaluation", "EvaluationError", "Recommendation", "evaluate_run", "load_evaluation",
           "upload_evaluated", "write_model_card"]
