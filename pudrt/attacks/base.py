"""What every poisoning attack shares: which samples to poison, their new labels, parameters.

An attack is a frozen dataclass. `apply(x)` puts the trigger on any batch
(float NCHW in [0, 1], the pixel domain of pudrt); `select(labels)` picks the
samples to poison, seeded; `poison_label(y)` gives their new labels. Defaults
follow BackdoorBench: all-to-one, target 0, poison ratio 0.1.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PoisonAttack:
    target: int = 0
    ratio: float = 0.1
    all_to_all: bool = False
    seed: int = 0

    name: ClassVar[str] = ""
    clean_label: ClassVar[bool] = False
    """Clean-label attacks poison target-class samples only and keep their labels."""

    def __post_init__(self):
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"--ratio must be in [0, 1], got {self.ratio}")
        if self.target < 0:
            raise ValueError(f"--target must be a class index >= 0, got {self.target}")
        if self.clean_label and self.all_to_all:
            raise ValueError(f"{self.name} is a clean-label attack; it has no all-to-all form")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The triggered version of `x` (float NCHW in [0, 1])."""
        raise NotImplementedError

    def poison_label(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        if self.clean_label:
            return y.clone()
        if self.all_to_all:
            return (y + 1) % num_classes
        return torch.full_like(y, self.target)

    def select(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """Sorted indices of the samples to poison: `ratio` of the dataset, drawn with `seed`."""
        if self.target >= num_classes:
            raise ValueError(f"--target {self.target} is not a class of this {num_classes}-class dataset")
        labels = np.asarray(labels)
        if self.clean_label:
            candidates = np.flatnonzero(labels == self.target)
        elif self.all_to_all:
            candidates = np.arange(len(labels))
        else:  # all-to-one: a target-class sample carries no backdoor signal, as in BackdoorBench
            candidates = np.flatnonzero(labels != self.target)
        n = int(round(self.ratio * len(labels)))
        if n > len(candidates):
            log.warning("%s: ratio %.3f asks for %d poisoned samples but only %d are eligible; poisoning all %d",
                        self.name, self.ratio, n, len(candidates), len(candidates))
            n = len(candidates)
        rng = np.random.default_rng(self.seed)
        return np.sort(rng.choice(candidates, size=n, replace=False))

    def attack_success(self, pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[int, int]:
        """(hits, count) for ASR: triggered samples whose true class is not the target, predicted as target."""
        if self.all_to_all:
            return int((pred == (y + 1) % num_classes).sum()), len(y)
        keep = self.counted(y)
        return int((pred[keep] == self.target).sum()), int(keep.sum())

    def counted(self, y: torch.Tensor) -> torch.Tensor:
        """Which samples ASR counts: all of them for an all-to-all attack, else those not of the target class."""
        return torch.ones_like(y, dtype=torch.bool) if self.all_to_all else y != self.target

    def params(self) -> dict:
        return {"attack": self.name, **dataclasses.asdict(self)}
