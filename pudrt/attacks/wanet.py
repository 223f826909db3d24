"""WaNet (Nguyen & Tran, ICLR 2021, "WaNet - Imperceptible Warping-based Backdoor Attack").

The trigger is a smooth warp: a k×k grid of random offsets, normalised by its
mean absolute value, upsampled bicubically to the image size, scaled by s/H and
added to the identity sampling grid. Noise mode trains the model to ignore other
warps: `cross_ratio`×ratio of the data gets the warp plus per-sample random noise
and keeps its label. BackdoorBench defaults s = 0.5, k = 4, cross ratio 2.

Bound: each output pixel samples the input within `max_displacement_px(H, W)`
pixels of its own position (bilinear), so it lies between the minimum and the
maximum of the input over that neighbourhood.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
import torch.nn.functional as F

from pudrt.attacks.base import PoisonAttack


@dataclasses.dataclass(frozen=True)
class WaNet(PoisonAttack):
    s: float = 0.5
    k: int = 4
    cross_ratio: float = 2.0
    name = "wanet"

    def __post_init__(self):
        super().__post_init__()
        if self.s <= 0 or self.k < 2 or self.cross_ratio < 0:
            raise ValueError(f"WaNet needs s > 0, k >= 2, cross_ratio >= 0; got {self.s}, {self.k}, {self.cross_ratio}")

    @functools.lru_cache(maxsize=4)  # noqa: B019 - frozen, hashable instances; a few sizes at most
    def grid(self, height: int, width: int) -> torch.Tensor:
        """The warped sampling grid, (1, H, W, 2) in grid_sample's [-1, 1] coordinates."""
        g = torch.Generator().manual_seed(self.seed)
        ins = torch.rand(1, 2, self.k, self.k, generator=g) * 2 - 1
        ins = ins / ins.abs().mean()
        noise = F.interpolate(ins, size=(height, width), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        identity = torch.stack((xs, ys), dim=2)[None]
        scale = torch.tensor([1.0 / width, 1.0 / height]) * self.s
        return (identity + noise * scale).clamp(-1, 1)

    def max_displacement_px(self, height: int, width: int) -> float:
        """The largest distance, in pixels, between an output pixel and where it samples the input."""
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        d = self.grid(height, width)[0] - torch.stack((xs, ys), dim=2)
        px = torch.stack((d[..., 0] * (width - 1) / 2, d[..., 1] * (height - 1) / 2), dim=-1)
        return float(px.abs().max())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.grid(x.shape[-2], x.shape[-1]).to(x.device, x.dtype).expand(len(x), -1, -1, -1)
        return F.grid_sample(x, grid, align_corners=True).clamp_(0.0, 1.0)

    def apply_noise(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The 'cross' transform: the trigger warp plus random per-sample noise (labels are kept)."""
        h, w = x.shape[-2:]
        base = self.grid(h, w).expand(len(x), -1, -1, -1)
        noise = (torch.rand(len(x), h, w, 2, generator=generator) * 2 - 1) / torch.tensor([w, h])
        grid = (base + noise).clamp(-1, 1).to(x.device, x.dtype)
        return F.grid_sample(x, grid, align_corners=True).clamp_(0.0, 1.0)

    def select_cross(self, labels: np.ndarray, poison: np.ndarray) -> np.ndarray:
        """Indices of the noise-mode samples: `cross_ratio`×ratio of the data, disjoint from `poison`."""
        rest = np.setdiff1d(np.arange(len(labels)), poison)
        n = min(len(rest), int(round(self.cross_ratio * self.ratio * len(labels))))
        rng = np.random.default_rng(self.seed + 1)
        return np.sort(rng.choice(rest, size=n, replace=False))
