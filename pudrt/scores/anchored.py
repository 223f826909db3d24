"""Distance from a fit on trusted clean anchors: the target-class filter for when poisons are its majority.

SPECTRE (spectre.py) fits the clean part of a class robustly, which assumes
the clean samples are the larger or the tighter group. An all-to-one attack
at 10% puts as many poisons in the target class as it has clean samples (5,000
of each on CIFAR-10), and the poisons, all carrying one trigger, are the
tighter group: the robust fit locks onto them and SPECTRE's scores come out
inverted. Measured on full CIFAR-10 Blend (resnet9w16): SPECTRE's 5,000
highest scores in the target class were 99.9% clean airplanes.

The anchored fit needs no robust estimate. It takes a handful of samples of
the class that are trusted to be clean (PUD's first clean pool is screened by
patch KL, see purify/screening.py: on Blend it held 502 target-class rows and
no poison), fits a Gaussian to them in the class's top-k principal directions
of the penultimate features, and flags every sample beyond the χ²_k quantile
of the squared Mahalanobis distance. No count of poisons is needed.

The fit is a plain mean and covariance: trimming the farthest 10% or 25% of
the anchors (a robust fit on them) raised recall when the anchors held some
poisons but flagged more clean samples (tests' resnet8 BadNets, 15% of the
94 anchors poisons: 88% / 86% and 81% / 91% precision / recall against a plain
fit's 90% / 69%; Blend 81% and 78% precision against 91%).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pudrt.scores.spectre import chi2_quantile, principal_coordinates

K = 16
QUANTILE = 0.999
MIN_ANCHORS_PER_DIRECTION = 4
"""A covariance fitted in k directions needs this many anchors per direction; fewer anchors lower k."""


@dataclass(frozen=True)
class AnchoredResult:
    """Scores of one class under a fit on its anchors."""

    scores: np.ndarray
    """Squared Mahalanobis distance from the anchors' fit (higher = more suspect)."""
    k: int
    """Principal directions used."""
    cut: float
    """χ²_k quantile beyond which a sample is flagged."""
    flagged: np.ndarray
    """Positions (into the class) of the samples beyond `cut`."""


def anchored_scores(features: np.ndarray, anchors: np.ndarray, k: int = K, quantile: float = QUANTILE
                    ) -> AnchoredResult:
    """Flag the samples of one class that lie outside a Gaussian fit on `anchors` (positions into `features`).

    k is lowered to len(anchors) // MIN_ANCHORS_PER_DIRECTION when there are few
    anchors; a ValueError says so when not even one direction can be fitted.
    """
    x = np.asarray(features, dtype=np.float64)
    anchors = np.unique(np.asarray(anchors, dtype=np.int64))
    if len(anchors) and (anchors[0] < 0 or anchors[-1] >= len(x)):
        raise ValueError(f"anchor positions must lie in [0, {len(x)}), got {anchors[0]}..{anchors[-1]}")
    k = min(k, len(anchors) // MIN_ANCHORS_PER_DIRECTION, x.shape[1] if x.ndim == 2 else 0, len(x))
    if k < 1:
        raise ValueError(f"{len(anchors)} anchors in a class of {len(x)} are too few to fit even one direction "
                         f"(need {MIN_ANCHORS_PER_DIRECTION})")
    z, k = principal_coordinates(x, k)
    mu = z[anchors].mean(axis=0)
    cov = np.cov(z[anchors], rowvar=False).reshape(k, k)
    cov += 1e-6 * max(float(np.trace(cov)) / k, 1e-12) * np.eye(k)
    diff = z - mu
    d2 = np.einsum("nd,nd->n", diff @ np.linalg.inv(cov), diff)
    cut = chi2_quantile(quantile, k)
    return AnchoredResult(d2, k, float(cut), np.flatnonzero(d2 > cut))
