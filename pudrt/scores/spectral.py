"""Spectral signatures (Tran, Li & Madry, NeurIPS 2018): centred projection scores."""

from __future__ import annotations

import numpy as np


def projection_scores(features: np.ndarray, labels: np.ndarray, means: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """score_i = ((f_i − μ_c) · v_c)² with c = labels[i]; NaN where c has no statistics.

    `means` and `vectors` are (classes, d): each class's mean feature and the top
    right-singular vector of its centred features. The CUDA kernel
    `kernels/spectral_scores.cu` computes the same.
    """
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    classes = len(means)
    out = np.full(len(features), np.nan, dtype=np.float32)
    ok = (labels >= 0) & (labels < classes)
    c = labels[ok]
    proj = np.einsum("nd,nd->n", features[ok] - means[c], vectors[c])
    out[ok] = proj * proj
    return out


def class_signatures(features: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean and top right-singular vector of the centred features, (classes, d) each.

    Classes with fewer than two samples get a NaN row, so their samples score NaN.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    d = features.shape[1]
    means = np.full((classes, d), np.nan)
    vectors = np.full((classes, d), np.nan)
    for c in range(classes):
        f = features[labels == c]
        if len(f) < 2:
            continue
        means[c] = f.mean(axis=0)
        _, _, vt = np.linalg.svd(f - means[c], full_matrices=False)
        vectors[c] = vt[0]
    return means, vectors


def spectral_signature_scores(features: np.ndarray, labels: np.ndarray, classes: int | None = None) -> np.ndarray:
    """Spectral-signature outlier score of every sample within its labelled class (higher = more suspect).

    Tran et al. flag the 1.5 × expected-poison-count highest scores of each class;
    `flag_top` does that. Read penultimate features, not logits: on logits the
    signal is near chance (see DESIGN.md).
    """
    labels = np.asarray(labels, dtype=np.int64)
    classes = classes if classes is not None else int(labels.max()) + 1 if len(labels) else 0
    means, vectors = class_signatures(features, labels, classes)
    return projection_scores(features, labels, means.astype(np.float32), vectors.astype(np.float32))


def flag_top(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` highest finite scores, highest first."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(scores))
    count = max(0, min(int(count), len(finite)))
    order = finite[np.argsort(-scores[finite], kind="stable")]
    return order[:count]
