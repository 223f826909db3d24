"""SPECTRE (Hayase, Kong, Somani & Oh, ICML 2021): robust statistics against backdoor poisons.

Within one class: project the features onto their top-k principal directions,
estimate the mean and covariance of the *clean* part robustly, whiten with it,
and score every sample with the quantum-entropy (QUE) score

    M = (1/n) Σ w_i w_iᵀ,   Q = exp(α (M − I) / (‖M‖₂ − 1)),   s_i = w_iᵀ Q w_i / tr Q,

which weighs each whitened direction by how much excess variance it carries, so
a poison cluster that whitening cannot explain dominates the score. The
paper's defaults: α = 4, 1.5 × the expected poison count removed, k searched
over a small grid.

Robust estimation here is iterative trimming: estimate (μ, Σ) from the kept
points, recompute every point's Mahalanobis distance, keep the n − m closest,
repeat until the kept set is stable (the concentration step of Rousseeuw's
minimum covariance determinant, a filter in the spirit of Diakonikolas et al.
2017). When poisons approach half of a class, the "most central half" is
ambiguous: a tight poison cluster can win it. Callers that know some clean
samples (PUD's clean pool) pass them as `seed`, and the filter starts there.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

ALPHA = 4.0
TAU = 0.1
K_GRID = (8, 16, 32)


@dataclass(frozen=True)
class SpectreResult:
    """Scores of one class and what the robust fit saw."""

    scores: np.ndarray
    """QUE score per sample (higher = more suspect)."""
    k: int
    """Principal directions used."""
    excess: float
    """‖M‖₂: top eigenvalue of the whitened second moment; near 1 for a class without a separate cluster."""
    outlier_fraction: float
    """Share of the class beyond the 99th percentile of the robust Gaussian fit (about 0.01 for a clean class)."""


def chi2_quantile(q: float, k: int) -> float:
    """Wilson–Hilferty approximation of the χ²_k quantile (no SciPy needed)."""
    z = NormalDist().inv_cdf(q)
    a = 2.0 / (9.0 * k)
    return k * (1 - a + z * np.sqrt(a)) ** 3


def principal_coordinates(x: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """(coordinates of the centred rows of `x` in their top-k principal directions, k capped by the rank)."""
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    k = max(1, min(k, vt.shape[0]))
    return centred @ vt[:k].T, k


def robust_mean_cov(z: np.ndarray, remove: int, seed: np.ndarray | None = None, starts: int = 10,
                    max_iter: int = 30, rng: np.random.Generator | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(μ, Σ, kept mask) of the n − `remove` points that the trimming filter keeps.

    Without a `seed`, the filter runs from several starts (all points, the points
    nearest the coordinate-wise median, and `starts` random (k+1)-subsets, as in
    FastMCD) and the fit with the smallest covariance determinant wins; a single
    start from all points converges to a fit that swallows a far cluster. With a
    `seed` (a mask of points believed clean), it starts there only.

    Σ is then rescaled so the kept points' median Mahalanobis distance matches a
    χ² truncated at the kept fraction (the usual consistency correction):
    trimming otherwise shrinks Σ and makes every clean point look far.
    """
    n, k = z.shape
    keep_n = max(k + 1, n - int(remove))
    rng = rng if rng is not None else np.random.default_rng(0)
    ridge = 1e-6 * max(float(np.trace(np.cov(z, rowvar=False).reshape(k, k))) / k, 1e-12)
    inits = []
    if seed is not None and seed.sum() > k:
        inits.append(np.asarray(seed, bool))
    else:
        inits.append(np.ones(n, bool))
        med = np.median(z, axis=0)
        mad = 1.4826 * np.median(np.abs(z - med), axis=0) + 1e-12
        near = np.zeros(n, bool)
        near[np.argsort(np.sum(((z - med) / mad) ** 2, axis=1))[:keep_n]] = True
        inits.append(near)
        for _ in range(starts):
            pick = np.zeros(n, bool)
            pick[rng.choice(n, size=min(n, k + 1), replace=False)] = True
            inits.append(pick)
    best = None
    for kept in inits:
        mu, cov, kept = _concentrate(z, kept, keep_n, ridge, max_iter)
        logdet = np.linalg.slogdet(cov)[1]
        if best is None or logdet < best[0]:
            best = (logdet, mu, cov, kept)
    _, mu, cov, kept = best
    frac = keep_n / n
    d_kept = np.median(_mahalanobis(z[kept], mu, cov))
    target = chi2_quantile(0.5 * frac, k) if frac < 1 else chi2_quantile(0.5, k)
    return mu, cov * (d_kept / target), kept


def spectral_filter(z: np.ndarray, remove: int, rounds: int = 10) -> np.ndarray:
    """Kept mask after removing `remove` points in `rounds` rounds, each time the points farthest from the
    coordinate-wise median along the top principal direction of what is still kept (Diakonikolas-style
    filtering with a robust centre). It isolates a far cluster that the minimum-determinant fit swallows."""
    n = len(z)
    kept = np.ones(n, bool)
    per = max(1, -(-int(remove) // rounds))
    while (~kept).sum() < remove:
        zk = z[kept]
        _, vecs = np.linalg.eigh(np.cov(zk, rowvar=False).reshape(z.shape[1], z.shape[1]))
        s = ((z - np.median(zk, axis=0)) @ vecs[:, -1]) ** 2
        s[~kept] = -1
        kept[np.argsort(-s)[: min(per, int(remove) - int((~kept).sum()))]] = False
    return kept


def _concentrate(z, kept, keep_n, ridge, max_iter):
    """C-steps: refit on the `keep_n` points closest under the current fit, until the kept set is stable."""
    k = z.shape[1]
    for _ in range(max_iter):
        mu = z[kept].mean(axis=0)
        cov = np.cov(z[kept], rowvar=False).reshape(k, k) + ridge * np.eye(k)
        new = np.zeros(len(z), bool)
        new[np.argsort(_mahalanobis(z, mu, cov), kind="stable")[:keep_n]] = True
        if np.array_equal(new, kept):
            break
        kept = new
    return mu, cov, kept


def _consistent(z, kept, cov):
    """Scale a covariance fitted on the kept fraction so the kept points' median distance matches χ²."""
    k = z.shape[1]
    frac = kept.mean()
    mu = z[kept].mean(axis=0)
    d_kept = np.median(_mahalanobis(z[kept], mu, cov))
    target = chi2_quantile(0.5 * frac, k) if frac < 1 else chi2_quantile(0.5, k)
    return cov * (d_kept / target)


def _score(z, mu, cov, k, m, alpha):
    """(selection key, SpectreResult) of one robust fit: whiten, QUE-score, measure how the top m stand out."""
    vals, vecs = np.linalg.eigh(cov)
    w = (z - mu) @ vecs / np.sqrt(np.maximum(vals, 1e-12))
    scores, excess = que_scores(w, alpha)
    d2 = np.einsum("nd,nd->n", w, w)
    outliers = float(np.mean(d2 > chi2_quantile(0.99, k)))
    top = np.sort(scores)[::-1]
    rest = top[m:]
    spread = 1.4826 * np.median(np.abs(rest - np.median(rest))) + 1e-12
    gap = (np.mean(top[:m]) - np.median(rest)) / spread
    return gap, SpectreResult(scores, k, excess, outliers)


def _mahalanobis(z, mu, cov):
    diff = z - mu
    return np.einsum("nd,nd->n", diff @ np.linalg.inv(cov), diff)


def que_scores(w: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, float]:
    """QUE scores of whitened points `w` (n, k), and ‖M‖₂."""
    n, k = w.shape
    m = w.T @ w / max(n, 1)
    vals, vecs = np.linalg.eigh(m)
    top = float(vals[-1])
    if top <= 1 + 1e-9:
        # No direction carries excess variance: QUE degenerates to the plain norm.
        return np.einsum("nd,nd->n", w, w) / k, top
    weights = np.exp(alpha * (vals - 1) / (top - 1))
    proj = w @ vecs
    return (proj * proj) @ weights / weights.sum(), top


def spectre_class(features: np.ndarray, expected_poisons: int, seed: np.ndarray | None = None,
                  k_grid: tuple[int, ...] = K_GRID, alpha: float = ALPHA) -> SpectreResult:
    """SPECTRE scores for the samples of one class.

    `expected_poisons` sizes the trimming (how many points the robust fit may
    ignore); `seed` is an optional boolean mask of samples believed clean.
    k is chosen from `k_grid` as the one whose top-`expected_poisons` scores
    stand furthest (in robust standard units) above the rest.
    """
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if n < 4:
        return SpectreResult(np.zeros(n), 0, 1.0, 0.0)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    m = int(np.clip(expected_poisons, 1, n // 2))
    best = None
    for k in sorted({min(k, vt.shape[0], max(1, n // 4)) for k in k_grid}):
        z = centred @ vt[:k].T
        fits = [robust_mean_cov(z, m, seed)]
        if seed is None or seed.sum() <= k:
            # The minimum-determinant fit can swallow a tight cluster; the spectral filter cannot. Keep the
            # fit under which the class shows the most excess variance, i.e. the one that exposes a cluster.
            kept = spectral_filter(z, m)
            fits.append((z[kept].mean(axis=0), _consistent(z, kept, np.cov(z[kept], rowvar=False).reshape(k, k)),
                         kept))
        for mu, cov, _ in fits:
            result = _score(z, mu, cov, k, m, alpha)
            if best is None or result[0] > best[0]:
                best = result
    return best[1]


def spectre_scores(features: np.ndarray, labels: np.ndarray, expected_poisons: dict[int, int] | int,
                   classes: list[int] | None = None, seed: np.ndarray | None = None) -> dict[int, SpectreResult]:
    """Run `spectre_class` on each class in `classes` (default: every label present).

    `expected_poisons` is one count for all classes or a per-class dict; `seed`
    is a boolean mask over all samples of ones believed clean.
    """
    labels = np.asarray(labels, dtype=np.int64)
    classes = sorted(np.unique(labels).tolist()) if classes is None else classes
    out = {}
    for c in classes:
        idx = np.flatnonzero(labels == c)
        m = expected_poisons.get(c, 0) if isinstance(expected_poisons, dict) else expected_poisons
        out[c] = spectre_class(features[idx], max(1, m), None if seed is None else seed[idx])
    return out


def outlier_mass(features: np.ndarray, k: int = 16, quantile: float = 0.99) -> tuple[float, float]:
    """(share of samples outside the robust fit's `quantile` ellipsoid, ‖M‖₂) for one class.

    The fit trims half the class (the most robust setting), so it locks onto the
    tightest half. A class without a separate cluster leaves about 1 − quantile
    outside; a class holding a cluster of poisons leaves that cluster (or, if
    the poisons are the tighter half, the clean samples) outside. Either way the
    mass is large, which is what target-class discovery needs.
    """
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if n < 8:
        return 0.0, 1.0
    z, k = principal_coordinates(x, max(1, min(k, n // 4)))
    mu, cov, _ = robust_mean_cov(z, n // 2)
    vals, vecs = np.linalg.eigh(cov)
    w = (z - mu) @ vecs / np.sqrt(np.maximum(vals, 1e-12))
    d2 = np.einsum("nd,nd->n", w, w)
    _, excess = que_scores(w)
    return float(np.mean(d2 > chi2_quantile(quantile, k))), excess
