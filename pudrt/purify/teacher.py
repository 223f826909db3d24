"""Mean teacher (Tarvainen & Valpola, NeurIPS 2017): an exponential moving average of the student."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class MeanTeacher:
    """`teacher = EMA(student)` with decay min(1 − 1/(t+1), `decay`), t counting updates (PUD's schedule).

    The early ramp makes the teacher follow the student closely at first
    instead of averaging in the random start.
    """

    def __init__(self, student: nn.Module, decay: float = 0.99):
        self.model = copy.deepcopy(student).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        d = min(1 - 1 / (self.updates + 1), self.decay)
        for t, s in zip(self.model.parameters(), student.parameters(), strict=True):
            t.lerp_(s.detach(), 1 - d)
        for t, s in zip(self.model.buffers(), student.buffers(), strict=True):
            t.copy_(s)
        self.updates += 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
