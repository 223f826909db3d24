"""Per-class sufficient statistics (count, Σf, Σffᵀ) that merge across batches and shards."""

from __future__ import annotations

import numpy as np


class ClassMoments:
    """Streaming per-class count, feature sum and outer-product sum, in float64.

    `add(features, labels)` folds a batch in; `merge(other)` adds another shard's
    statistics; `mean()` and `covariance()` read them out. Labels outside
    0..classes-1 are ignored. The CUDA kernels in `kernels/class_moments.cu`
    accumulate the same arrays on the GPU.
    """

    def __init__(self, classes: int, dim: int):
        self.classes, self.dim = classes, dim
        self.counts = np.zeros(classes, np.float64)
        self.sums = np.zeros((classes, dim), np.float64)
        self.outer = np.zeros((classes, dim, dim), np.float64)

    def add(self, features: np.ndarray, labels: np.ndarray) -> ClassMoments:
        features = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        if features.ndim != 2 or features.shape[1] != self.dim or len(labels) != len(features):
            raise ValueError(f"expected ({len(labels)}, {self.dim}) features for {len(labels)} labels, "
                             f"got {features.shape}")
        for c in np.unique(labels):
            if not 0 <= c < self.classes:
                continue
            f = features[labels == c]
            self.counts[c] += len(f)
            self.sums[c] += f.sum(axis=0)
            self.outer[c] += f.T @ f
        return self

    def merge(self, other: ClassMoments) -> ClassMoments:
        if (other.classes, other.dim) != (self.classes, self.dim):
            raise ValueError("cannot merge statistics of different shapes")
        self.counts += other.counts
        self.sums += other.sums
        self.outer += other.outer
        return self

    def mean(self) -> np.ndarray:
        """(classes, d) class means; NaN rows for empty classes."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums / self.counts[:, None]

    def covariance(self) -> np.ndarray:
        """(classes, d, d) population covariance E[ffᵀ] − μμᵀ; NaN for empty classes."""
        mu = self.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.outer / self.counts[:, None, None] - mu[:, :, None] * mu[:, None, :]
