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

A few poisons among the anchors stretch the fit over the poisons' cluster
and cost most of the recall. So the fit used until 2026-12-01 dropped the
anchors beyond its own cut and refitted, until every anchor it kept lay
inside: a clean Gaussian puts 0.1% of its anchors beyond the 99.9% quantile,
so clean anchors lose a handful, and the poisons, which lie far out once the
fit no longer leans on them, go first. Measured on full CIFAR-10 (resnet9w16,
infected model's features of the target class): WaNet's 694 judge-confirmed
anchors held 76 poisons; the plain fit flagged 1,974 rows at 97.6% precision
and 38.5% recall, that trimmed fit (10 fits, 607 anchors, 1 poison) 5,048 at
96.8% / 97.8%. Where the anchors were nearly clean it changed little:
BadNets (500 anchors, 20 poisons) 97.4% / 98.1% -> 95.9% / 99.2%, Blend (502,
none) 92.2% / 98.6% -> 91.1% / 99.0%. Trimming a fixed share instead (the
farthest 10% to 30% of the anchors, repeated) kept raising recall after the
poisons were gone by flagging ever more clean rows (WaNet: 88% to 61%
precision). What trimming from all anchors cannot undo: slipped poisons that form a
cluster of their own, a few percent of the anchors or more, are a mode the
fit covers, none lies beyond the cut and none is dropped (synthetic: 20 of
380 anchors from a cluster half as wide as the clean class). It happened on
full CIFAR-10: WaNet at purification seed 1 (resnet9w16) had 112 poisons in
its 720 judge-confirmed anchors, and the fit trimmed from all of them kept 73
and flagged 3,056 rows at 96.2% precision and 58.8% recall (the run ended at
ASR 2.79%).

So the fit starts from a core instead (`CORE_SHARE`): the three quarters of
the anchors with the smallest covariance determinant (FastMCD, spectre.py's
robust_mean_cov, with its consistency correction), then every anchor within
that fit's cut, and from there it refits until the anchors it uses are
exactly those within its own cut, adding back as well as dropping (a fixed
point; clean anchors in the core's tails come back). Synthetic (tests, 340
clean anchors plus slipped poisons 16 units away): a cluster as wide as the
clean class, 60 slipped: recall 1.2% trimmed from all anchors, 100% from the
core; half as wide, 8 / 12 / 40 slipped: 18.9% / 0% / 0%, and 100% from the
core at each. A tight cluster of 60 (15% of the anchors) still holds the
core: the minimum determinant takes it in, and nothing is caught. Measured offline on the
anchors of the full-CIFAR-10 runs (features of the infected models; flags,
precision / recall, trimmed from all anchors → from the core): WaNet seed 1
3,056, 96.2% / 58.8% → 5,140, 95.4% / 98.1% (583 anchors, 1 poison); WaNet
seed 0 (694 anchors, 76 poisons) 5,048, 96.8% / 97.8% → 5,077, 96.5% / 97.9%;
BadNets (500, 20) 5,172, 95.9% / 99.2% → 5,186, 95.7% / 99.2%; BadNets seed 1
(499, 13) 5,113 → 5,118 at 96.9% / 99.2%; Blend (502, none) 5,434, 91.1% /
99.0% → 5,518, 90.1% / 99.4%. Growing from the core without the fixed point
(trim only) flagged 50-140 more clean rows; the core's consistency-corrected
fit used directly (reweighted MCD) cost 3-5 points of precision on BadNets
and Blend: the clean features have heavier tails than a Gaussian.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pudrt.scores.spectre import _mahalanobis, chi2_quantile, principal_coordinates, robust_mean_cov

K = 16
QUANTILE = 0.999
MIN_ANCHORS_PER_DIRECTION = 4
"""A covariance fitted in k directions needs this many anchors per direction; fewer anchors lower k."""
CORE_SHARE = 0.75
"""Share of the anchors in the minimum-determinant core the trimmed fit starts from (module docstring)."""
CORE_MIN_PER_DIRECTION = 16
"""The core needs this many anchors per direction (256 at k = 16); with fewer, the fit is trimmed from all anchors.
On the tests' embedded BadNets data (94 anchors, 12 poisons, 16 directions) a core of 70 led to a tighter fixed
point (73 anchors) that flagged 1,258 rows at 77.7% precision, where trimming from all anchors kept 93 and reached
85%: a covariance fitted on few anchors puts the samples it was not fitted on farther out than χ² says."""


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
    anchors: np.ndarray
    """Positions of the anchors the final fit used (those given, less the ones trimmed)."""
    rounds: int
    """Fits made after the core (1 when the anchors within the core's cut were already the fixed point)."""


def anchored_scores(features: np.ndarray, anchors: np.ndarray, k: int = K, quantile: float = QUANTILE,
                    trimmed: bool = True, max_rounds: int = 50) -> AnchoredResult:
    """Flag the samples of one class that lie outside a Gaussian fit on `anchors` (positions into `features`).

    k is lowered to len(anchors) // MIN_ANCHORS_PER_DIRECTION when there are few
    anchors; a ValueError says so when not even one direction can be fitted.
    With `trimmed`, the fit starts from the anchors' minimum-determinant core and
    refits until the anchors it uses are those within its own cut (module
    docstring), or, with fewer than CORE_MIN_PER_DIRECTION·k anchors, starts
    from all of them and drops those beyond its cut until none is; at most
    `max_rounds` fits, never on fewer than MIN_ANCHORS_PER_DIRECTION·k anchors.
    Without `trimmed`, one fit on all anchors.
    """
    x = np.asarray(features, dtype=np.float64)
    given = np.unique(np.asarray(anchors, dtype=np.int64))
    if len(given) and (given[0] < 0 or given[-1] >= len(x)):
        raise ValueError(f"anchor positions must lie in [0, {len(x)}), got {given[0]}..{given[-1]}")
    k = min(k, len(given) // MIN_ANCHORS_PER_DIRECTION, x.shape[1] if x.ndim == 2 else 0, len(x))
    if k < 1:
        raise ValueError(f"{len(given)} anchors in a class of {len(x)} are too few to fit even one direction "
                         f"(need {MIN_ANCHORS_PER_DIRECTION})")
    z, k = principal_coordinates(x, k)
    cut = chi2_quantile(quantile, k)
    least = MIN_ANCHORS_PER_DIRECTION * k
    used = given
    core = trimmed and len(given) >= CORE_MIN_PER_DIRECTION * k
    if core:
        mu, cov, _ = robust_mean_cov(z[given], remove=int((1 - CORE_SHARE) * len(given)))
        start = given[_mahalanobis(z[given], mu, cov) <= cut]
        used = start if len(start) >= least else given
    rounds = 0
    while True:
        d2 = _distances(z, used)
        rounds += 1
        candidates = given if core else used  # from a core, anchors come back; from all of them, they only go
        within = candidates[d2[candidates] <= cut]
        if (not trimmed or np.array_equal(within, used) or len(within) < least or rounds >= max_rounds):
            return AnchoredResult(d2, k, float(cut), np.flatnonzero(d2 > cut), used, rounds)
        used = within


def _distances(z: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of every row of `z` from a Gaussian fitted to the rows `anchors`."""
    k = z.shape[1]
    mu = z[anchors].mean(axis=0)
    cov = np.cov(z[anchors], rowvar=False).reshape(k, k)
    cov += 1e-6 * max(float(np.trace(cov)) / k, 1e-12) * np.eye(k)
    return _mahalanobis(z, mu, cov)
