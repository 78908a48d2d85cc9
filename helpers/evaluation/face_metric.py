"""Face likeness inside an evaluation: faces found in the training images and in the generated ones, embedded
with the face models of ``helpers.models.faces``; skipped with a note when the training images have none."""

from __future__ import annotations

import numpy as np


class FaceScorer:
    """Face embeddings of generated cells: ``embed_cells(by_set) -> {set: {id(cell): [rows]}}``."""

    def __init__(self, models):
        self.models = models

    def embed_cells(self, by_set: dict[str, list]) -> dict[str, dict[int, list[np.ndarray]]]:
        out: dict[str, dict[int, list[np.ndarray]]] = {}
        for name, cells in by_set.items():
            out[name] = {id(c): [row for i in c.images for row in self.models.embed_faces(i.image)] for c in cells}
        return out


def open_faces(ws, settings, train: dict, notes: list[str]) -> FaceScorer | None:
    """The face scorer, with the training faces put in ``train["faces"]``; None (and a note) when skipped."""
    from helpers.dataset.embeddings import open_training_image
    from helpers.models.faces import FaceModelError, load_face_models

    try:
        models = load_face_models(settings.face_models or None, ws.models, settings.device)
    except FaceModelError as exc:
        notes.append(f"face likeness skipped: {exc}")
        return None
    rows = []
    for path in train.get("paths", []):
        rows += models.embed_faces(open_training_image(path))
    if not rows:
        if settings.faces == "on":
            notes.append("face likeness skipped: no face found in the training images")
        else:
            notes.append("face likeness skipped: the training images have no faces (faces='auto')")
        return None
    train["faces"] = np.stack(rows)
    return FaceScorer(models)
