"""Shared-pattern unlearning (pudrt's addition to PUD): a trigger added to every poison is a pattern its class shares.

An additive, sample-independent trigger (SIG's sinusoid, Blend's image, BadNets'
patch) shifts the mean image of the class that holds the poisons by the share of
poisons times the trigger. Natural class means are smooth blobs, so the
high-passed difference between the found target class's mean and the median
other class's mean is the trigger, up to scale, and nothing for an ordinary
class. Measured on full CIFAR-10 at 10% (its RMS ×255; every other class 1.1-2.4):
SIG 24.0 (cosine 0.98 with the sinusoid), Blend 7.2, BadNets 3.4, WaNet 1.1.

The pattern is used only when the infected model confirms it is a trigger: added
to non-target images at amplitude `scale` (the smallest of SCALES that works),
it must turn at least MIN_FLIP of them into the target, and every other class's
own pattern, added the same way, must turn at most that minus MIN_LEAD into its
class. Measured on the full-CIFAR-10 resnet9w16 models: SIG flips 97% at scale 1,
Blend 99.7% at 2, BadNets 55% at 4; WaNet's pattern (a warp is not additive)
and every ordinary class's pattern at most 4% even at 8.

PUD then trains on copies of non-target rows with the pattern added at a random
amplitude in [LOW, HIGH] × `scale`, under their own labels: the pattern stops
meaning the target. This is what SIG needs: a clean-label attack adds its signal
to every image of the target class, so no clean part of the class exists for
PUD's pools to keep, and clean fine-tuning on the class re-teaches the signal
(README, Benchmarks). From the SIG model that PUD had left at ASR 92.8%, one
clean epoch with such copies measured ASR 9.3% at [1, 2] (C-Acc 76.9% before and
after), 53% at [2, 4]: amplitudes above the trigger's do not unlearn it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pudrt.purify.loops import pixels

log = logging.getLogger(__name__)

SCALES = (1.0, 2.0, 4.0, 8.0)
"""Amplitudes (times the estimated pattern) at which the infected model is asked to read the pattern."""
MIN_FLIP = 0.5
"""Share of non-target images the pattern must turn into the target at some scale."""
MIN_LEAD = 0.3
"""... ahead of the best other class's own pattern at that scale."""
PROBE_ROWS = 1000
"""Non-class rows each pattern is tried on."""
LOW, HIGH = 0.5, 1.5
"""Range of the copies' amplitude, times `scale`."""
BLUR = 5
"""Side of the box blur whose output is removed (high pass): it keeps 93% of a 6-cycle sinusoid on 32 columns."""


@dataclass(frozen=True)
class SharedPattern:
    """The found target class's pattern, the amplitude at which the infected model reads it as a trigger, and
    the evidence; `scale` is None when it is not a trigger (then nothing is unlearned)."""

    target: int
    pattern: torch.Tensor
    scale: float | None
    evidence: dict

    def copies(self, x: torch.Tensor, y: torch.Tensor, share: float, gen: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to `share` × len(y) of the batch's non-target rows with the pattern added (random amplitude in
        [LOW, HIGH] × scale, clipped to [0, 1]) and their own labels; empty when the pattern is not a trigger."""
        keep = torch.nonzero(y != self.target).flatten()
        if self.scale is None or not len(keep):
            return x[:0], y[:0]
        keep = keep[torch.randperm(len(keep), generator=gen)[: max(1, int(share * len(y)))]]
        amp = self.scale * (LOW + (HIGH - LOW) * torch.rand(len(keep), 1, 1, 1, generator=gen))
        return (x[keep] + amp * self.pattern).clamp_(0.0, 1.0), y[keep]


def class_means(data, num_classes: int, chunk: int = 4096) -> np.ndarray:
    """Mean image of each class in [0, 1], float64 (K, C, H, W); NaN for an empty class. Read in chunks."""
    sums = np.zeros((num_classes, *data.x.shape[1:]), np.float64)
    counts = np.bincount(data.y, minlength=num_classes).astype(np.float64)
    for i in range(0, len(data), chunk):
        x, y = data.x[i : i + chunk].astype(np.float64), data.y[i : i + chunk]
        np.add.at(sums, y, x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None, None, None] / 255.0


def high_pass(image: np.ndarray) -> np.ndarray:
    """`image` (C, H, W) minus its BLUR × BLUR box blur (reflected at the borders)."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    pad = min(BLUR // 2, t.shape[-1] - 1, t.shape[-2] - 1)
    if pad < 1:
        return image.astype(np.float32)
    blurred = F.avg_pool2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), 2 * pad + 1, 1)
    return (t - blurred)[0].numpy()


def class_patterns(means: np.ndarray) -> np.ndarray:
    """Each class's high-passed mean minus the median of the other classes' means (K, C, H, W)."""
    k = len(means)
    return np.stack([high_pass(means[c] - np.nanmedian(np.delete(means, c, 0), 0)) for c in range(k)])


@torch.no_grad()
def flip_rate(model: nn.Module, x: torch.Tensor, pattern: torch.Tensor, scale: float, cls: int,
              batch_size: int = 500) -> float:
    """Share of `x` that `model` reads as `cls` once `scale` × `pattern` is added."""
    hits = 0
    for i in range(0, len(x), batch_size):
        out = model((x[i : i + batch_size] + scale * pattern).clamp(0.0, 1.0))
        logits = out[0] if isinstance(out, (tuple, list)) else out
        hits += int((logits.argmax(1) == cls).sum())
    return hits / max(len(x), 1)


def shared_pattern(infected: nn.Module, data, target: int, num_classes: int, seed: int = 0) -> SharedPattern:
    """The target class's shared pattern, checked against the infected model (module docstring)."""
    means = class_means(data, num_classes)
    present = [c for c in range(num_classes) if not np.isnan(means[c]).any()]
    if target not in present or len(present) < 3:
        why = "the target class is empty" if target not in present else "fewer than 3 classes hold samples"
        return SharedPattern(target, torch.zeros(data.x.shape[1:]), None, {"skipped": why})
    patterns = np.zeros_like(means, dtype=np.float32)
    patterns[present] = class_patterns(means[present])
    rng = np.random.default_rng(seed)
    modes = [(m, m.training) for m in infected.modules()]
    infected.eval()
    try:
        def probe(c: int) -> torch.Tensor:
            rows = np.flatnonzero(data.y != c)
            return pixels(data, np.sort(rng.choice(rows, min(PROBE_ROWS, len(rows)), replace=False)))[0]

        x = probe(target)
        pattern = torch.from_numpy(patterns[target])
        flips = {s: round(flip_rate(infected, x, pattern, s, target), 4) for s in SCALES}
        scale = next((s for s in SCALES if flips[s] >= MIN_FLIP), None)
        evidence = {"class": target, "rms_255": round(float(np.sqrt(np.mean(patterns[target] ** 2))) * 255, 2),
                    "max_255": round(float(np.abs(patterns[target]).max()) * 255, 1),
                    "other_classes_rms_255": round(float(np.median(
                        [np.sqrt(np.mean(patterns[c] ** 2)) for c in present if c != target])) * 255, 2),
                    "flips_to_target": {str(s): v for s, v in flips.items()}}
        if scale is None:
            evidence["skipped"] = f"the pattern turns under {MIN_FLIP:.0%} of other images into the class"
            return SharedPattern(target, pattern, None, evidence)
        controls = {c: round(flip_rate(infected, probe(c), torch.from_numpy(patterns[c]), scale, c), 4)
                    for c in present if c != target}
        evidence.update({"scale": scale, "other_patterns_flip": {str(c): v for c, v in controls.items()}})
        if flips[scale] - max(controls.values()) < MIN_LEAD:
            evidence["skipped"] = (f"other classes' patterns flip as much ({max(controls.values()):.0%}) at scale "
                                   f"{scale}: the pattern is not a trigger")
            log.info("shared pattern of class %d not used: %s", target, evidence["skipped"])
            return SharedPattern(target, pattern, None, evidence)
        log.info("class %d's shared pattern turns %.0f%% of other images into it at scale %g: unlearning it",
                 target, 100 * flips[scale], scale)
        return SharedPattern(target, pattern, scale, evidence)
    finally:
        for m, mode in modes:
            m.training = mode
