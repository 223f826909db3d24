"""Projected gradient descent, L∞ (Madry et al., ICLR 2018), untargeted.

`PGD(model, eps=6/255, alpha=eps/5, steps=7)(x, y) -> x_adv`: `steps` sign-gradient
ascent steps on the cross-entropy, each followed by projection onto the ε-ball
around x and onto [0, 1], from x itself or a uniform random start in the ball.
The presets of pudrt: PGD-7 at ε = 6/255 (as PBE/PUD) and ε = 8/255. The same
steps run inside the ONNX `pgd` graph of `pudrt.engine.grad`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PGD:
    def __init__(self, model: nn.Module, eps: float = 6 / 255, alpha: float | None = None, steps: int = 7,
                 random_start: bool = False, generator: torch.Generator | None = None):
        if eps < 0 or steps < 0:
            raise ValueError(f"PGD needs eps >= 0 and steps >= 0, got {eps}, {steps}")
        self.model, self.eps, self.steps = model, eps, steps
        self.alpha = alpha if alpha is not None else eps / 5
        self.random_start, self.generator = random_start, generator

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            return self._attack(x.detach(), y)
        finally:
            self.model.train(was_training)

    def start(self, x: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return x.clone()
        noise = torch.rand(x.shape, generator=self.generator, dtype=x.dtype).to(x.device) * 2 - 1
        return (x + self.eps * noise).clamp(0.0, 1.0)

    def _attack(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.start(x)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            out = self.model(x_adv)
            logits = out[0] if isinstance(out, (tuple, list)) else out
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x_adv)
            x_adv = x_adv.detach() + self.alpha * grad.sign()
            x_adv = torch.minimum(torch.maximum(x_adv, x - self.eps), x + self.eps).clamp(0.0, 1.0)
        return x_adv.detach()
