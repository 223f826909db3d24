"""The training and scoring loops that PUD, PBE and AdvrBD share.

All of them read the decoded dataset (`pudrt.train.Materialized`) by index, so
every pool is just an index array.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pudrt.attacks.pgd import PGD
from pudrt.progress import progress
from pudrt.purify.teacher import MeanTeacher
from pudrt.train import Materialized, augment_batch

Copies = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
"""(augmented batch, labels, generator) -> extra training rows and their labels."""


def pixels(data: Materialized, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Float NCHW in [0, 1] and labels of samples `idx` (read in sorted order for the page cache)."""
    idx = np.asarray(idx)
    return torch.from_numpy(data.x[idx]).float().div_(255.0), torch.from_numpy(data.y[idx]).long()


def shuffled_batches(idx: np.ndarray, batch_size: int, gen: torch.Generator) -> list[np.ndarray]:
    idx = np.asarray(idx)
    order = idx[torch.randperm(len(idx), generator=gen).numpy()]
    return [np.sort(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def clone_trainable(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in train mode with every parameter trainable (the infected model stays frozen)."""
    clone = copy.deepcopy(model)
    for p in clone.parameters():
        p.requires_grad_(True)
    return clone.train()


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean-teacher consistency: squared distance of the two softmaxes, summed over classes, mean over samples."""
    return (F.softmax(student_logits, 1) - F.softmax(teacher_logits.detach(), 1)).pow(2).sum(1).mean()


def finetune_epoch(student: nn.Module, opt: torch.optim.Optimizer, data: Materialized, idx: np.ndarray,
                   gen: torch.Generator, batch_size: int, pgd: PGD | None = None,
                   teacher: MeanTeacher | None = None, consistency_weight: float = 0.0,
                   augment: bool = True, labels: np.ndarray | None = None, clean_weight: float = 0.0,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                   negatives: np.ndarray | None = None, negative_weight: float = 1.0,
                   copies: Copies | None = None, desc: str = "epoch") -> dict:
    """One epoch of (adversarial) fine-tuning on samples `idx`.

    With `pgd`, each batch is replaced by its untargeted PGD examples labelled
    with the sample's own label (PBE/PUD model purification); with `teacher`,
    a softmax-MSE consistency term to the EMA teacher is added and the teacher
    is updated after each step. `clean_weight` > 0 mixes in the loss on the
    clean batch: (1 − w)·CE(x_adv) + w·CE(x) per batch row. `labels`
    overrides the dataset's labels (AdvrBD relabelling). `scheduler` is
    stepped after every batch.
    `negatives`, a precise poison set, are unlearned along the way: each batch
    carries a proportional slice of them (one pass per epoch) in the same
    forward, and the loss averages CE over the batch and
    `negative_weight`·`negative_loss` over the slice, per sample.
    `copies(x, y, gen) -> (x', y')` adds training rows made from the
    (augmented, not attacked) batch, e.g. non-target rows carrying the target
    class's shared pattern under their own labels (pattern.py); they join the
    same forward and count in the CE like any sample. Copies and negatives
    are never attacked, and keep their full per-sample weight in a mixed
    epoch (they used to sit inside the (1 − w) part and count at a tenth in
    PUD's finish and AdvrBD's adversarial relearning epoch).
    """
    student.train()
    batches = shuffled_batches(idx, batch_size, gen)
    neg_batches: list[np.ndarray] = []
    if negatives is not None and len(negatives) and len(batches):
        neg_batches = shuffled_batches(negatives, -(-len(negatives) // len(batches)), gen)
    loss_sum = cons_sum = neg_sum = 0.0
    correct = seen = adv_seen = copied = 0
    for i, b in enumerate(progress(batches, desc)):
        x, y = pixels(data, b)
        if labels is not None:
            y = torch.from_numpy(labels[b]).long()
        if augment:
            x = augment_batch(x, gen)
        x_clean = x
        if pgd is not None:
            x = pgd(x, y)  # PGD switches to eval mode and back
            adv_seen += len(y)
        xc, yc = copies(x_clean, y, gen) if copies is not None else (x[:0], y[:0])
        parts = [x, xc]
        if neg_batches:
            xn, yn = pixels(data, neg_batches[i % len(neg_batches)])
            parts.append(augment_batch(xn, gen) if augment else xn)
        out = student(torch.cat(parts)) if len(parts[1]) or neg_batches else student(x)
        logits = out[: len(y)]
        ce_rows = len(y) + len(yc)
        ce = F.cross_entropy(out[:ce_rows], torch.cat([y, yc]), reduction="none")
        own = ce[: len(y)].mean()
        if pgd is not None and clean_weight > 0:  # the mix is of the batch's own rows only
            own = (1 - clean_weight) * own + clean_weight * F.cross_entropy(student(x_clean), y)
        # per sample, a copy counts as much as a batch row, and a negative as much times the weight, whatever
        # the clean/adversarial mix of the batch rows (a copy or a negative is never attacked)
        loss = len(y) * own + ce[len(y):].sum()
        copied += len(yc)
        if neg_batches:
            neg = negative_loss(out[ce_rows:], yn)
            neg_sum += float(neg.detach()) * len(y)
            loss = loss + negative_weight * len(yn) * neg
        loss = loss / (ce_rows + (len(yn) if neg_batches else 0))
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(x)
            cons = softmax_mse(logits, t_logits)
            loss = loss + consistency_weight * cons
            cons_sum += float(cons.detach()) * len(y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        if teacher is not None:
            teacher.update(student)
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    row = {"loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "samples": seen,
           "adversarial_samples": adv_seen}
    if teacher is not None:
        row["consistency"] = cons_sum / max(seen, 1)
    if neg_batches:
        row["negative_loss"] = neg_sum / max(seen, 1)
    if copies is not None:
        row["pattern_copies"] = copied
    return row


def negative_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The complementary-label ("negative learning") loss, mean(−log(1 − p_y)): "this image is not its label"."""
    p_y = F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    return -torch.log1p(-p_y.clamp(max=1 - 1e-6)).mean()


def paired_batches(data: Materialized, clean_idx: np.ndarray, poison_idx: np.ndarray, batch_size: int,
                   gen: torch.Generator, desc: str):
    """One pass over the poison rows in shuffled batches, each with a clean batch (the clean rows cycle)."""
    p_batches = shuffled_batches(poison_idx, batch_size, gen)
    c_batches = shuffled_batches(clean_idx, batch_size, gen)
    for i, pb in enumerate(progress(p_batches, desc)):
        yield (*pixels(data, c_batches[i % len(c_batches)]), *pixels(data, pb))


def unlearn_epoch(student: nn.Module, opt: torch.optim.Optimizer, data: Materialized, clean_idx: np.ndarray,
                  poison_idx: np.ndarray, anchor: list[torch.Tensor], gen: torch.Generator, batch_size: int,
                  unlearn_weight: float, anchor_weight: float, desc: str = "unlearning") -> dict:
    """Backdoor unlearning (PUD): CE(clean batch) − w·CE(poison batch) + λ·‖θ − θ₀‖₁.

    One pass over the poison pool, each poison batch paired with a clean batch;
    the L1 anchor keeps the weights near θ₀ so that ascending the poison loss
    cannot wreck the model.
    """
    student.train()
    if len(poison_idx) == 0 or len(clean_idx) == 0:
        return {"unlearn_loss": 0.0, "poison_ce": 0.0, "batches": 0}
    total = pce = 0.0
    batches = 0
    for xc, yc, xp, yp in paired_batches(data, clean_idx, poison_idx, batch_size, gen, desc):
        batches += 1
        ce_clean = F.cross_entropy(student(xc), yc)
        ce_poison = F.cross_entropy(student(xp), yp)
        l1 = sum((p - p0).abs().sum() for p, p0 in zip(student.parameters(), anchor, strict=True))
        loss = ce_clean - unlearn_weight * ce_poison + anchor_weight * l1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach())
        pce += float(ce_poison.detach())
    return {"unlearn_loss": total / batches, "poison_ce": pce / batches, "batches": batches}


def negative_epoch(student: nn.Module, opt: torch.optim.Optimizer, data: Materialized, clean_idx: np.ndarray,
                   poison_idx: np.ndarray, gen: torch.Generator, batch_size: int, weight: float,
                   desc: str = "negative learning") -> dict:
    """Unlearn a precise poison set: CE(clean batch) + w·mean(−log(1 − p_y(poison batch))).

    The complementary-label ("negative learning") loss says only "this image is
    not its label"; unlike gradient ascent on CE it is bounded below by 0, so it
    stops pushing once the label's probability is gone instead of wrecking the
    model. It is only safe on a set that is nearly all poisons: it would
    unlearn a clean sample's true class just the same. Both batches are augmented
    (on the demo's resnet9w16, leaving the poison batch as it is unlearned more per
    pass at small budgets; not measured on full CIFAR-10, so not the default).
    """
    student.train()
    if len(poison_idx) == 0 or len(clean_idx) == 0:
        return {"loss": 0.0, "poison_p_label": 0.0, "batches": 0}
    total = p_label = 0.0
    batches = 0
    for xc, yc, xp, yp in paired_batches(data, clean_idx, poison_idx, batch_size, gen, desc):
        batches += 1
        xc, xp = augment_batch(xc, gen), augment_batch(xp, gen)
        poison_logits = student(xp)
        loss = F.cross_entropy(student(xc), yc) + weight * negative_loss(poison_logits, yp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach())
        p_label += float(F.softmax(poison_logits.detach(), 1).gather(1, yp[:, None]).mean())
    return {"loss": total / batches, "poison_p_label": p_label / batches, "batches": batches}


@torch.no_grad()
def forward_all(pair: nn.Module, data: Materialized, idx: np.ndarray | None = None, batch_size: int = 256,
                desc: str = "scoring") -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features of `pair` (x -> (logits, features)) on samples `idx` (default: all)."""
    modes = [(m, m.training) for m in pair.modules()]  # `pair` may share modules with a model being trained
    pair.eval()
    idx = np.arange(len(data)) if idx is None else np.asarray(idx)
    logits, feats = [], []
    try:
        for i in progress(range(0, len(idx), batch_size), desc, total=-(-len(idx) // batch_size)):
            x, _ = pixels(data, idx[i : i + batch_size])
            lo, fe = pair(x)
            logits.append(lo.float().numpy())
            feats.append(fe.float().flatten(1).numpy())
    finally:
        for m, mode in modes:
            m.training = mode
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(logits), np.concatenate(feats)
