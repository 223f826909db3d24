"""Blend (Chen et al. 2017, "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning").

x' = (1 − α)·x + α·pattern, α = 0.2 (BackdoorBench). The pattern is an image
file (resized to the input size) or, by default, seeded uniform noise, so the
same seed reproduces the same trigger at evaluation time. |x' − x| ≤ α.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
from PIL import Image

from pudrt.attacks.base import PoisonAttack


@dataclasses.dataclass(frozen=True)
class Blend(PoisonAttack):
    alpha: float = 0.2
    pattern: str | None = None
    """Path of a pattern image; None draws uniform noise from `seed`."""
    name = "blend"

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"Blend alpha must be in (0, 1], got {self.alpha}")

    @functools.lru_cache(maxsize=4)  # noqa: B019 - frozen, hashable instances; a few sizes at most
    def pattern_tensor(self, height: int, width: int) -> torch.Tensor:
        if self.pattern is None:
            g = torch.Generator().manual_seed(self.seed)
            return torch.rand(1, 3, height, width, generator=g)
        with Image.open(self.pattern) as im:
            arr = np.asarray(im.convert("RGB").resize((width, height), Image.BILINEAR), dtype=np.float32)
        return torch.from_numpy(arr / 255.0).permute(2, 0, 1).unsqueeze(0)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pattern_tensor(x.shape[-2], x.shape[-1]).to(x.device, x.dtype)
        return (1 - self.alpha) * x + self.alpha * p
