"""Row-wise KL divergence between the softmaxes of two logit arrays."""

from __future__ import annotations

import numpy as np


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def kl_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KL(softmax(a_i) ‖ softmax(b_i)) for each row i; float32 (n, k) in, float32 (n,) out.

    Stable for extreme logits: both softmaxes go through log-sum-exp with the row
    maximum subtracted. The CUDA kernel `kernels/kl_rows.cu` computes the same.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"kl_rows needs two (n, k) arrays of one shape, got {a.shape} and {b.shape}")
    log_p, log_q = _log_softmax(a), _log_softmax(b)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    return np.maximum(kl, 0.0).astype(np.float32)
