"""BadNets (Gu et al. 2017, "BadNets: Identifying Vulnerabilities in the ML Model Supply Chain").

The trigger is a solid patch stamped on the image; BackdoorBench's CIFAR-10
default is a 3×3 white square in the bottom-right corner.
"""

from __future__ import annotations

import dataclasses

import torch

from pudrt.attacks.base import PoisonAttack


@dataclasses.dataclass(frozen=True)
class BadNets(PoisonAttack):
    """`BadNets(target=0, ratio=0.1, size=3, value=1.0)(x)` → x with the patch in the bottom-right corner."""

    size: int = 3
    value: float = 1.0
    name = "badnets"

    def __post_init__(self):
        super().__post_init__()
        if self.size < 1:
            raise ValueError(f"BadNets patch size must be >= 1, got {self.size}")
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"BadNets patch value must be in [0, 1], got {self.value}")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[..., -self.size :, -self.size :] = self.value
        return out
