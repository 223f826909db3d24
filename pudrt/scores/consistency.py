"""Prediction consistency between two models (PUD, Niu et al.): high for samples both models read alike."""

from __future__ import annotations

import numpy as np


def consistency_scores(logits_a: np.ndarray, logits_b: np.ndarray) -> np.ndarray:
    """0.5 + 0.5·cos(a_i, b_i), minus 0.5 where the two argmaxes differ; in [−0.5, 1].

    PUD compares the infected model with the mean teacher: a poisoned sample is
    read as the target by the infected model and as its true class by a teacher
    whose backdoor is fading, so it lands at the bottom.
    """
    a = np.asarray(logits_a, dtype=np.float64)
    b = np.asarray(logits_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"logits shapes differ: {a.shape} vs {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    cos = np.einsum("nk,nk->n", a, b) / np.maximum(na * nb, 1e-12)
    return 0.5 + 0.5 * cos - 0.5 * (a.argmax(1) != b.argmax(1))
