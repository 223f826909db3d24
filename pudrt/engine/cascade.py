"""INT8 first, the float model where INT8 is unsure: a cascade runner for scanning.

INT8 changes a prediction mostly where the model is near a tie. Measured on
the engine benchmark's torchvision resnet18 (2 epochs on the embedded data,
INT8 as `quantize_int8` makes it on a VNNI CPU, 1,488 held-out test images;
one-off script, 2026-11-30): INT8 alone agreed with fp32 on 97.18%; re-running
through fp32 the images whose INT8 top-2 logit margin is among the lowest 5%
gave 98.92%, 10% gave 99.46%, 20% 99.53%. What stays are images that a clipped
activation moved far (their INT8 margin reached 1.96): no margin finds those.
resnet8 98.86% -> 99.73% / 100% at 5% / 10%; PreActResNet-18 99.13% -> 100% at 5%.

The cost is one float pass over the re-run share, in a smaller batch; the
engine benchmark measures the whole cascade beside the other competitors.
"""

from __future__ import annotations

import numpy as np

from pudrt.engine.runners import _as_numpy
from pudrt.errors import PudrtError


def top2_margin(logits: np.ndarray) -> np.ndarray:
    """Each row's largest logit minus its second largest (0 for a tie)."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise PudrtError(f"a top-2 margin needs (N, classes >= 2) logits, got shape {logits.shape}")
    top = np.partition(logits, -2, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def margin_for_share(fast, images: np.ndarray, share: float, batch: int = 256) -> float:
    """The INT8 margin under which `share` of `images` (real images, e.g. the calibration set) fall: the
    cascade's threshold for re-running about that share of data like them."""
    if not 0 < share < 1:
        raise PudrtError(f"the re-run share must lie in (0, 1), got {share}")
    if len(images) < 16:
        raise PudrtError(f"choosing the cascade's margin needs real images; got {len(images)}")
    margins = np.concatenate([top2_margin(fast(images[i : i + batch])["logits"])
                              for i in range(0, len(images), batch)])
    return float(np.quantile(margins, share))


class CascadeRunner:
    """`fast(x)` (e.g. the INT8 OrtRunner), then `exact(x)` (the fp32 one) on the rows whose fast top-2 logit
    margin is below `margin`; their logits and features are the exact runner's. Same interface as the runners
    (`runner(x) -> {"logits", "features"}`, a context manager that closes both); `rerun_share` says how much
    went through `exact`."""

    def __init__(self, fast, exact, margin: float):
        if not margin >= 0:
            raise PudrtError(f"the cascade's margin must be >= 0, got {margin}")
        self.fast, self.exact, self.margin = fast, exact, float(margin)
        self.seen = self.rerun = 0

    def __enter__(self) -> CascadeRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for runner in (self.fast, self.exact):
            if hasattr(runner, "close"):
                runner.close()

    @property
    def rerun_share(self) -> float:
        return self.rerun / self.seen if self.seen else 0.0

    def __call__(self, x) -> dict[str, np.ndarray]:
        x = _as_numpy(x)
        out = self.fast(x)
        rows = np.flatnonzero(top2_margin(out["logits"]) < self.margin)
        self.seen += len(x)
        self.rerun += len(rows)
        if len(rows):
            again = self.exact(x[rows])  # fancy indexing copies: contiguous
            out = {k: v.copy() for k, v in out.items()}
            for k in out.keys() & again.keys():
                out[k][rows] = again[k]
        return out
