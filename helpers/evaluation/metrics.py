"""The evaluation's formulas: small pure functions over L2-normalised embedding rows (numpy), each cited.

Inputs are unit rows as ``helpers.models.encoders`` returns them (image or text embeddings of one encoder), so a
dot product is a cosine similarity. Nothing here loads a model; ``helpers.evaluation.run`` feeds it.
"""

from __future__ import annotations

import numpy as np

CLIP_SCORE_WEIGHT = 1.0  # torchmetrics' CLIPScore (100·cos); Hessel et al. 2021 use w = 2.5 for ViT-B/32


def _rows(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    return a[None] if a.ndim == 1 else a


def clip_score(image_rows, text_rows, weight: float = CLIP_SCORE_WEIGHT) -> np.ndarray:
    """Per pair: 100 · w · max(cos(image, text), 0) (Hessel et al. 2021, "CLIPScore", eq. 1; torchmetrics' ×100)."""
    i, t = _rows(image_rows), _rows(text_rows)
    return 100.0 * weight * np.clip(np.sum(i * t, axis=1), 0.0, None)


def nearest(generated, reference) -> tuple[np.ndarray, np.ndarray]:
    """(index, cosine) of each generated row's nearest reference row (exact search: training sets are small)."""
    sims = _rows(generated) @ _rows(reference).T
    idx = sims.argmax(axis=1)
    return idx, sims[np.arange(len(idx)), idx]


def nearest_similarity(generated, reference) -> float:
    """Mean nearest-neighbour cosine of generated images to the training set (the "CLIP-I"/"DINO-I" of DreamBooth,
    Ruiz et al. 2023, taken to the closest training image as in LyCORIS' fidelity, Yeh et al. 2024)."""
    return float(nearest(generated, reference)[1].mean()) if len(_rows(generated)) else float("nan")


def centroid_distance(generated, reference) -> float:
    """1 - cos(mean generated, mean training) (a first-moment stand-in for FID's mean term, Heusel et al. 2017)."""
    a, b = _rows(generated).mean(axis=0), _rows(reference).mean(axis=0)
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(1.0 - a @ b / norm) if norm > 0 else float("nan")


def vendi_score(rows) -> float:
    """exp(-Σ λ log λ) over the eigenvalues λ of K/n, K the cosine-similarity matrix (Friedman & Dieng 2023,
    "The Vendi Score", def. 3.1): the effective number of distinct items, 1 .. n."""
    x = _rows(rows)
    n = len(x)
    if n == 0:
        return float("nan")
    eig = np.linalg.eigvalsh(x @ x.T / n)
    eig = eig[eig > 1e-12]
    return float(np.exp(-np.sum(eig * np.log(eig))))


def memorised(generated, reference, threshold: float) -> list[tuple[int, int, float]]:
    """(generated index, nearest training index, cosine) of each image at or above ``threshold`` (the copy
    detection of Somepalli et al. 2023, "Diffusion Art or Digital Forgery?", with a fixed threshold)."""
    if not len(_rows(reference)) or not len(_rows(generated)):
        return []
    idx, sims = nearest(generated, reference)
    return [(g, int(idx[g]), float(sims[g])) for g in range(len(idx)) if sims[g] >= threshold]


def preservation(with_model, without_model) -> float:
    """Mean cosine of paired images (same prompt and seed) with and without the LoRA / fine-tune: 1 = the base
    model's behaviour untouched on unrelated prompts (LyCORIS' "base model preservation", Yeh et al. 2024)."""
    a, b = _rows(with_model), _rows(without_model)
    return float(np.sum(a * b, axis=1).mean()) if len(a) else float("nan")


def face_likeness(generated_faces, training_faces) -> float:
    """Mean over generated faces of the best cosine to a training face (identity similarity as in face
    verification, e.g. SFace, Zhong et al. 2021); NaN when either side has no face."""
    if not len(_rows(generated_faces)) or not len(_rows(training_faces)):
        return float("nan")
    return nearest_similarity(generated_faces, training_faces)


def relative_gap(value: float, best: float) -> float:
    """How far below the best a value is, as a fraction of the best (0 = the best)."""
    return float((best - value) / abs(best)) if best else 0.0
