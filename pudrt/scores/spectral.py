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
