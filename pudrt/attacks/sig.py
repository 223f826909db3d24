"""SIG (Barni et al. 2019, "A New Backdoor Attack in CNNs by Training Set Corruption Without Label Poisoning").

Clean-label: a horizontal sinusoid v(i, j) = δ/255 · sin(2π j f / W) is added to
target-class training images only, labels kept; at test time the same signal on
any image triggers the target. BackdoorBench defaults δ = 40, f = 6. |x' − x| ≤ δ/255.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from pudrt.attacks.base import PoisonAttack


@dataclasses.dataclass(frozen=True)
class SIG(PoisonAttack):
    delta: float = 40.0
    freq: float = 6.0
    name = "sig"
    clean_label = True

    def __post_init__(self):
        super().__post_init__()
        if self.delta <= 0 or self.freq <= 0:
            raise ValueError(f"SIG needs delta > 0 and freq > 0, got {self.delta}, {self.freq}")

    def signal(self, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
        j = torch.arange(width, device=device, dtype=dtype)
        return (self.delta / 255.0) * torch.sin(2 * math.pi * j * self.freq / width)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.signal(x.shape[-1], x.device, x.dtype)).clamp_(0.0, 1.0)
