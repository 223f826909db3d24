"""Clean accuracy (C-Acc), attack success rate (ASR) and robust accuracy (RA), named as in BackdoorBench.

They take any `model(x) -> logits` callable on float NCHW in [0, 1], so the same
numbers come from a torch module or an engine runner.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pudrt.attacks.base import PoisonAttack
from pudrt.io.datasets import LabelledImages, iter_batches

Logits = Callable[[torch.Tensor], torch.Tensor]


def _logits(out) -> torch.Tensor:
    """A model's logits, from a plain output or a (logits, features) pair."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _evenly_spaced(dataset: LabelledImages, limit: int | None) -> np.ndarray | None:
    """`limit` evenly spaced sample indices of `dataset` (None: all of it), as the adv_acc metrics attack."""
    if limit is None or limit >= len(dataset):
        return None
    return np.unique(np.linspace(0, len(dataset) - 1, limit).round().astype(np.int64))


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
        preds.append(_logits(model(x)).argmax(1).cpu())
        labels.append(batch.y)
    if not preds:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(preds), torch.cat(labels)


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """The fraction of `pred` equal to `y` (NaN for none), from `predict`'s pair."""
    return float((pred == y).float().mean()) if len(y) else float("nan")


def clean_accuracy(model: Logits, dataset: LabelledImages, batch_size: int = 256) -> float:
    """C-Acc: the fraction of clean test samples classified correctly."""
    return accuracy(*predict(model, dataset, None, batch_size))


def attack_success_rate(model: Logits, dataset: LabelledImages, attack: PoisonAttack,
                        batch_size: int = 256) -> float:
    """ASR: of the triggered test samples whose true class is not the target, the fraction predicted as target.

    For an all-to-all attack, the fraction predicted as (y + 1) mod K over all samples.
    """
    pred, y = predict(model, dataset, attack, batch_size)
    hits, count = attack.attack_success(pred, y, dataset.num_classes)
    return hits / count if count else float("nan")


def backdoor_rates(model: Logits, dataset: LabelledImages, attack: PoisonAttack, batch_size: int = 256,
                   clean: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """ASR with the two numbers it is read against, from one pass over the triggered samples.

    - `asr`: as `attack_success_rate`.
    - `asr_untriggered`: the same count on the clean samples. A model that calls 2% of the clean non-target
      images the target reads about 2% ASR with no backdoor at all, so an ASR at or below this means the trigger
      no longer moves predictions to the target and what is left is the model's own errors.
    - `robust_acc` (BackdoorBench's RA): the counted triggered samples still given their true class.

    `clean`: the (predictions, labels) of `predict(model, dataset)` when the caller already has them.
    """
    pred, y = predict(model, dataset, attack, batch_size)
    clean_pred, clean_y = clean if clean is not None else predict(model, dataset, None, batch_size)
    if not torch.equal(clean_y, y):
        raise ValueError("backdoor_rates: `clean` is not this dataset's predictions (its labels differ)")
    hits, count = attack.attack_success(pred, y, dataset.num_classes)
    natural, _ = attack.attack_success(clean_pred, y, dataset.num_classes)
    if not count:
        return dict.fromkeys(("asr", "asr_untriggered", "robust_acc"), float("nan"))
    keep = attack.counted(y)
    return {"asr": hits / count, "asr_untriggered": natural / count,
            "robust_acc": int((pred[keep] == y[keep]).sum()) / count}


def adversarial_accuracy(model: torch.nn.Module, dataset: LabelledImages, eps: float = 6 / 255, steps: int = 7,
                         alpha: float | None = None, limit: int | None = None, batch_size: int = 256) -> float:
    """adv_acc@PGD-k/ε: accuracy on untargeted L∞ PGD examples of `limit` evenly spaced samples (default all).

    Uses the same `PGD` as purification, so numbers in a purify history and in
    `pudrt evaluate` are the same measurement. Needs a differentiable torch model.
    """
    return transferred_accuracy(model, {"model": model}, dataset, eps, steps, alpha, limit, batch_size)["model"]


def transferred_accuracy(source: torch.nn.Module, judges: dict[str, Logits], dataset: LabelledImages,
                         eps: float = 6 / 255, steps: int = 7, alpha: float | None = None, limit: int | None = None,
                         batch_size: int = 256) -> dict[str, float]:
    """Each judge's accuracy on the untargeted L∞ PGD examples crafted on `source`'s gradients.

    This is how an engine's robustness is measured (`pudrt evaluate ENGINE --source MODEL`): an engine has no
    gradient of its own to attack (an INT8 graph's rounding has none), but whoever holds the weights it was
    exported from attacks those, and the engine is what then classifies the examples. With the source among the
    judges, its entry is `adversarial_accuracy` of it. Same `PGD`, same samples.
    """
    from pudrt.attacks.pgd import PGD

    pgd = PGD(source, eps=eps, alpha=alpha, steps=steps)
    indices = _evenly_spaced(dataset, limit)
    correct = dict.fromkeys(judges, 0)
    seen = 0
    was = source.training
    source.eval()
    try:
        for batch in iter_batches(dataset, batch_size, indices=indices):
            x, y = batch.float(), batch.y
            x_adv = pgd(x, y)
            with torch.no_grad():
                for name, judge in judges.items():
                    correct[name] += int((_logits(judge(x_adv)).argmax(1).cpu() == y).sum())
            seen += len(y)
    finally:
        source.train(was)
    return {name: hits / seen if seen else float("nan") for name, hits in correct.items()}


@torch.no_grad()
def agreement(a: Logits, b: Logits, dataset: LabelledImages, batch_size: int = 256) -> dict[str, float]:
    """How closely `b` reproduces `a` over `dataset`: top-1 agreement and the largest |Δlogit|."""
    same = seen = 0
    worst = 0.0
    for batch in iter_batches(dataset, batch_size):
        x = batch.float()
        la, lb = (_logits(m(x)) for m in (a, b))
        same += int((la.argmax(1).cpu() == lb.argmax(1).cpu()).sum())
        worst = max(worst, float((la.float().cpu() - lb.float().cpu()).abs().max()))
        seen += len(x)
    return {"top1_agreement": same / seen if seen else float("nan"), "max_abs_logit": worst}


def square_accuracy(model: Logits, dataset: LabelledImages, eps: float = 8 / 255, queries: int = 1000,
                    limit: int | None = None, batch_size: int = 256, seed: int = 0) -> dict[str, float]:
    """adv_acc@Square-q/ε: accuracy on the Square attack's examples (`pudrt.attacks.square`), which needs only
    logits, so it measures an engine itself. Also the median queries an image that the attack turned took
    (one misclassified before the attack is not counted there)."""
    from pudrt.attacks.square import Square

    indices = _evenly_spaced(dataset, limit)
    attack = Square(model, eps=eps, queries=queries, seed=seed)
    correct = seen = 0
    spent = []
    module = model if isinstance(model, torch.nn.Module) else None
    was = module.training if module is not None else False
    if module is not None:
        module.eval()  # queries are answered as deployed: batch norm on its running statistics
    try:
        for batch in iter_batches(dataset, batch_size, indices=indices):
            x, y = batch.float(), batch.y
            x_adv = attack(x, y)
            with torch.no_grad():
                right = _logits(model(x_adv)).argmax(1).cpu() == y
            correct += int(right.sum())
            seen += len(y)
            spent.append(attack.used[~right & (attack.used > 1)])
    finally:
        if module is not None:
            module.train(was)
    used = torch.cat(spent) if spent else torch.zeros(0)
    return {"accuracy": correct / seen if seen else float("nan"),
            "median_queries": float(used.float().median()) if len(used) else float("nan")}
