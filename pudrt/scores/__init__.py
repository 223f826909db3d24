"""Pure scoring math: arrays in, arrays out. NumPy here; CuPy twins in `pudrt.engine.kernels`."""

from pudrt.scores.kl import kl_rows
from pudrt.scores.moments import ClassMoments
from pudrt.scores.spectral import projection_scores

__all__ = ["ClassMoments", "kl_rows", "projection_scores"]
