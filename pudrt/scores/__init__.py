"""Pure scoring math: arrays in, arrays out. NumPy here; CuPy twins in `pudrt.engine.kernels`."""

from pudrt.scores.anchored import AnchoredResult, anchored_scores
from pudrt.scores.consistency import consistency_scores
from pudrt.scores.kl import kl_rows
from pudrt.scores.moments import ClassMoments
from pudrt.scores.spectral import class_signatures, flag_top, projection_scores, spectral_signature_scores
from pudrt.scores.spectre import SpectreResult, outlier_mass, spectre_class, spectre_scores

__all__ = [
    "AnchoredResult", "ClassMoments", "SpectreResult", "anchored_scores", "class_signatures", "consistency_scores",
    "flag_top", "kl_rows", "outlier_mass", "projection_scores", "spectral_signature_scores", "spectre_class",
    "spectre_scores",
]
