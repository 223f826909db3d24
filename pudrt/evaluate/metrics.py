"""Clean accuracy (C-Acc) and attack success rate (ASR), named as in BackdoorBench.

Both take any `model(x) -> logits` callable on float NCHW in [0, 1], so the same
numbers come from a torch module or an engine runner.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pudrt.attacks.base import PoisonAttack
from pudrt.io.datasets import LabelledImages, iter_batches

Logits = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def predict(model: Logits, dataset: LabelledImages, attack: PoisonAttack | None = None,
            batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 predictions and true labels over `dataset`, with `attack`'s trigger applied when given.

    Batches of 256: on a 2-core CPU a resnet9w16 ran forward 1.4x slower at 512 (benchmarks/torch_batch.py).
    """
    preds, labels = [], []
    for batch in iter_batches(dataset, batch_size):
        x = batch.float()
        if attack is not None:
            x = attack.apply(x)
        out = model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        preds.append(out.argmax(1).cpu())
        labels.append(batch.y)
    if not preds:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(preds), torch.cat(labels)


def clean_accuracy(model: Logits, dataset: LabelledImages, batch_size: int = 256) -> float:
    """C-Acc: the fraction of clean test samples classified correctly."""
    pred, y = predict(model, dataset, None, batch_size)
    return float((pred == y).float().mean()) if len(y) else float("nan")


def attack_success_rate(model: Logits, dataset: LabelledImages, attack: PoisonAttack,
                        batch_size: int = 256) -> float:
    """ASR: of the triggered test samples whose true class is not the target, the fraction predicted as target.

    For an all-to-all attack, the fraction predicted as (y + 1) mod K over all samples.
    """
    pred, y = predict(model, dataset, attack, batch_size)
    hits, count = attack.attack_success(pred, y, dataset.num_classes)
    return hits / count if count else float("nan")


def adversarial_accuracy(model: torch.nn.Module, dataset: LabelledImages, eps: float = 6 / 255, steps: int = 7,
                         alpha: float | None = None, limit: int | None = None, batch_size: int = 256) -> float:
    """adv_acc@PGD-k/ε: accuracy on untargeted L∞ PGD examples of `limit` evenly spaced samples (default all).

    Uses the same `PGD` as purification, so numbers in a purify history and in
    `pudrt evaluate` are the same measurement. Needs a differentiable torch model.
    """
    from pudrt.attacks.pgd import PGD

    pgd = PGD(model, eps=eps, alpha=alpha, steps=steps)
    indices = None
    if limit is not None and limit < len(dataset):
        indices = np.unique(np.linspace(0, len(dataset) - 1, limit).round().astype(np.int64))
    correct = seen = 0
    was = model.training
    model.eval()
    try:
        for batch in iter_batches(dataset, batch_size, indices=indices):
            x, y = batch.float(), batch.y
            x_adv = pgd(x, y)
            with torch.no_grad():
                out = model(x_adv)
            out = out[0] if isinstance(out, (tuple, list)) else out
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
    finally:
        model.train(was)
    return correct / seen if seen else float("nan")
