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

Copies alone leave a clean-label class unlearnt: every training image of it
carries the signal, so the model never sees one without it (on full CIFAR-10
SIG both the infected and the purified model recognised 0.0% of the test
airplanes). When at least MIN_CARRYING of the class's rows carry the pattern
(each row's high-passed image projected on it, coefficient above half its
size), the pattern is taken out of them (`restore`: the row minus that
projection) and PUD trains on the restored rows under the class's label. A
dirty-label attack cannot reach that share: at 10% all-to-one its poisons are
half of the class. Measured on the embedded data (share of rows above half):
SIG 100% (coefficients 0.80-1.08 from the 5th to the 95th percentile), Blend
50%, BadNets 47%, WaNet 26%, ordinary classes 18-33%. The restored SIG
airplanes lie 7.9/255 RMS from their clean originals (27.3 before): clipped
pixels and the part of the sinusoid the high pass misses stay. From the tests'
SIG resnet8 (airplane accuracy 0%, ASR 99.7%), epochs on all rows with copies:
without restoring, ASR 22.6% and airplanes 0.0% after one epoch (no
augmentation); with it 0.5% and 55.5%; with augmentation, as PUD trains,
airplanes 61.5%, 74%, 47%, 56.5% after epochs 1-4 at ASR at most 0.6%. Putting
the pattern in and out of every other class's rows too, so that those traces
mean nothing, measured the same (64%, 73%, 53%, 55%), so PUD does not do it.
AdvrBD does, for half its copies (`pattern_round_trip`): its clean model is
trained from scratch, and on full CIFAR-10 SIG that model learnt the residue
as the class (restored training airplanes 97.6%, test airplanes 38.9%; with
the round trip 53.6%, C-Acc 80.9% -> 82.3%).
PUD at a tenth of its schedule on 500 embedded images per class with that
model (infected C-Acc 53.9%, ASR 99.7%): C-Acc 48.7%, ASR 0.0%, airplanes 61%
with restoring; 48.9%, 0.0%, 0.0% without.
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
MIN_CARRYING = 0.9
"""Share of the class's rows that must carry the pattern for them to be restored (module docstring)."""


@dataclass(frozen=True)
class SharedPattern:
    """The found target class's pattern, the amplitude at which the infected model reads it as a trigger, and
    the evidence; `scale` is None when it is not a trigger (then nothing is unlearned)."""

    target: int
    pattern: torch.Tensor
    scale: float | None
    evidence: dict
    restores: bool = False
    """True when nearly the whole class carries the pattern (a clean-label attack): its rows are trained on
    with the pattern taken out (`restore`)."""

    def copies(self, x: torch.Tensor, y: torch.Tensor, share: float, gen: torch.Generator,
               round_trip: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to `share` × len(y) of the batch's non-target rows with the pattern added (random amplitude in
        [LOW, HIGH] × scale, clipped to [0, 1]) and their own labels; empty when the pattern is not a trigger.
        A `round_trip` share of them, drawn at random, then has it taken back out (`strip`): they carry the residue
        that restoring leaves on the class's own rows (module docstring), under other classes' labels."""
        keep = torch.nonzero(y != self.target).flatten()
        if self.scale is None or not len(keep):
            return x[:0], y[:0]
        keep = keep[torch.randperm(len(keep), generator=gen)[: max(1, int(share * len(y)))]]
        amp = self.scale * (LOW + (HIGH - LOW) * torch.rand(len(keep), 1, 1, 1, generator=gen))
        out = (x[keep] + amp * self.pattern).clamp_(0.0, 1.0)
        if round_trip > 0:
            back = torch.rand(len(keep), generator=gen) < round_trip
            if bool(back.any()):
                out[back] = self.strip(out[back])
        return out, y[keep]

    def strip(self, x: torch.Tensor) -> torch.Tensor:
        """Each row of `x` minus its projection on the pattern (in the high-passed domain), clipped to [0, 1]."""
        coef = pattern_coefficients(x, self.pattern)
        return (x - coef[:, None, None, None] * self.pattern).clamp_(0.0, 1.0)

    def restore(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """`x` with the pattern taken out of the target-class rows (`strip`); other rows as they are."""
        rows = y == self.target
        if not bool(rows.any()):
            return x
        out = x.clone()
        out[rows] = self.strip(x[rows])
        return out


class RestoredRows:
    """`data` (a `Materialized` dataset) whose rows read back through `SharedPattern.restore`, stored at the
    dataset's own 8-bit precision; labels and length as `data`'s. For the training loops, which read rows by
    index; scoring reads `data` itself."""

    def __init__(self, data, pattern: SharedPattern):
        self.data, self.y, self.index = data, data.y, data.index
        self.x = _RestoredPixels(data, pattern)

    def __len__(self) -> int:
        return len(self.data)


class _RestoredPixels:
    def __init__(self, data, pattern: SharedPattern):
        self.data, self.pattern = data, pattern
        self.shape, self.dtype = data.x.shape, data.x.dtype

    def __len__(self) -> int:
        return len(self.data.x)

    def __getitem__(self, idx) -> np.ndarray:
        raw = self.data.x[idx]
        labels = np.atleast_1d(np.asarray(self.data.y[idx]))
        if not np.any(labels == self.pattern.target):
            return raw
        batch = raw if raw.ndim == 4 else raw[None]  # one row, indexed by an integer
        x = torch.from_numpy(np.ascontiguousarray(batch)).float().div_(255.0)
        restored = self.pattern.restore(x, torch.from_numpy(labels)).mul_(255.0).round_().to(torch.uint8).numpy()
        return restored if raw.ndim == 4 else restored[0]


def high_pass_batch(x: torch.Tensor) -> torch.Tensor:
    """`x` (N, C, H, W) minus its BLUR × BLUR box blur, reflected at the borders (as `high_pass`)."""
    pad = min(BLUR // 2, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < 1:
        return x
    return x - F.avg_pool2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), 2 * pad + 1, 1)


def pattern_coefficients(x: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Each row's high-passed image projected on `pattern` (already high-passed), in units of the pattern: about
    1 for a row that carries it at the size it has in the class mean, 0 for one that does not."""
    norm = float((pattern * pattern).sum())
    if norm == 0.0:
        return torch.zeros(len(x))
    return (high_pass_batch(x) * pattern).flatten(1).sum(1) / norm


def carrying_share(data, cls: int, pattern: torch.Tensor, chunk: int = 2048) -> tuple[float, list[float]]:
    """Share of class `cls`'s rows whose coefficient on `pattern` exceeds 0.5, and the coefficients' 5th, 50th
    and 95th percentiles."""
    rows = np.flatnonzero(data.y == cls)
    coef = torch.cat([pattern_coefficients(pixels(data, rows[i : i + chunk])[0], pattern)
                      for i in range(0, len(rows), chunk)]) if len(rows) else torch.zeros(0)
    if not len(coef):
        return 0.0, []
    return float((coef > 0.5).float().mean()), [round(float(q), 3) for q in
                                                  np.percentile(coef.numpy(), [5, 50, 95])]


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
    return high_pass_batch(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None])[0].numpy()


def class_patterns(means: np.ndarray) -> np.ndarray:
    """Each class's high-passed mean minus the median of the other classes' means (K, C, H, W)."""
    k = len(means)
    return np.stack([high_pass(means[c] - np.nanmedian(np.delete(means, c, 0), 0)) for c in range(k)])


def every_class_pattern(data, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """`class_patterns` of the classes that hold samples (float32, zeros for an empty class; all zeros when fewer
    than 3 hold samples), and those classes."""
    means = class_means(data, num_classes)
    present = [c for c in range(num_classes) if not np.isnan(means[c]).any()]
    patterns = np.zeros_like(means, dtype=np.float32)
    if len(present) >= 3:
        patterns[present] = class_patterns(means[present])
    return patterns, present


@torch.no_grad()
def flip_rate(model: nn.Module, x: torch.Tensor, pattern: torch.Tensor, scale: float, cls: int,
              batch_size: int = 256) -> float:
    """Share of `x` that `model` reads as `cls` once `scale` × `pattern` is added."""
    hits = 0
    for i in range(0, len(x), batch_size):
        out = model((x[i : i + batch_size] + scale * pattern).clamp(0.0, 1.0))
        logits = out[0] if isinstance(out, (tuple, list)) else out
        hits += int((logits.argmax(1) == cls).sum())
    return hits / max(len(x), 1)


def shared_pattern(infected: nn.Module, data, target: int, num_classes: int, seed: int = 0) -> SharedPattern:
    """The target class's shared pattern, checked against the infected model (module docstring)."""
    patterns, present = every_class_pattern(data, num_classes)
    if target not in present or len(present) < 3:
        why = "the target class is empty" if target not in present else "fewer than 3 classes hold samples"
        return SharedPattern(target, torch.zeros(data.x.shape[1:]), None, {"skipped": why})
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
        share, spread = carrying_share(data, target, pattern)
        restores = share >= MIN_CARRYING
        evidence.update({"carrying_share": round(share, 4), "coefficient_p5_p50_p95": spread, "restores": restores})
        if restores:
            log.info("%.0f%% of class %d carries the pattern (a clean-label attack): its rows are trained on with "
                     "the pattern taken out", 100 * share, target)
        return SharedPattern(target, pattern, scale, evidence, restores)
    finally:
        for m, mode in modes:
            m.training = mode
