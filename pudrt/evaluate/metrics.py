"""Clean accuracy (C-Acc) and attack success rate (ASR), named as in BackdoorBench.

Both take any `model(x) -> logits` callable on float NCHW in [0, 1], so the same
numbers come from a torch module or an engine runner.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pudrt.attacks.base import PoisonAttack
from pudrt.io.datasets import LabelledImages, iter_batches

Logits = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def predict(model: Logits, dataset: LabelledImages, attack: PoisonAttack | None = None,
            batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 predictions and true labels over `dataset`, with `attack`'s trigger applied when given."""
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


def clean_accuracy(model: Logits, dataset: LabelledImages, batch_size: int = 512) -> float:
    """C-Acc: the fraction of clean test samples classified correctly."""
    pred, y = predict(model, dataset, None, batch_size)
    return float((pred == y).float().mean()) if len(y) else float("nan")


def attack_success_rate(model: Logits, dataset: LabelledImages, attack: PoisonAttack,
                        batch_size: int = 512) -> float:
    """ASR: of the triggered test samples whose true class is not the target, the fraction predicted as target.

    For an all-to-all attack, the fraction predicted as (y + 1) mod K over all samples.
    """
    pred, y = predict(model, dataset, attack, batch_size)
    hits, count = attack.attack_success(pred, y, dataset.num_classes)
    return hits / count if count else float("nan")
