"""AdvrBD: a backdoor-robust model from a poisoned dataset without auxiliary data.

Four stages, sharing pudrt's loops:

1. **KL-consistency**: perturb each sample inside a random square patch (half-width
   `kl_radius`) within an L∞ ball of `kl_eps`, maximising KL(f(x) ‖ f(x+δ)).
   Poisons are dominated by their trigger and barely move (low KL); the highest-KL
   `seed_share` of each class are the first clean picks.
2. **Backdoor enhancement**: a copy of the infected model learns everything but
   the picks and unlearns the picks (loss ascent, capped at 2·ln K), for a few
   rounds; what it then misclassifies joins the picks. It ends with its clean
   features gone and only the trigger shortcut left.
3. **Clean model**: samples the enhanced model misclassifies are clean; a freshly
   initialised copy of the architecture is trained on them.
4. **Relabel and relearn**: the rest are relabelled with the clean model's
   predictions and it is fine-tuned on everything.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pudrt.models import as_pair
from pudrt.progress import progress
from pudrt.purify.config import PurifyConfig
from pudrt.purify.loops import (
    clone_trainable,
    finetune_epoch,
    forward_all,
    make_optimizer,
    pixels,
    shuffled_batches,
)
from pudrt.purify.progressive import Pools
from pudrt.purify.screening import patch_kl_scores, pick_per_class
from pudrt.purify.session import Session

log = logging.getLogger(__name__)


def enhance_backdoor(infected: nn.Module, data, picks: np.ndarray, cfg: PurifyConfig, classes: int,
                     gen: torch.Generator, rounds: int) -> tuple[nn.Module, np.ndarray, list[dict]]:
    """Stage 2: learn the rest, unlearn the picks; grow the picks with what the model then gets wrong."""
    model = clone_trainable(infected)
    opt = make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    cap = 2 * math.log(classes)
    picks = np.asarray(picks)
    history = []
    for r in range(rounds):
        rest = np.setdiff1d(np.arange(len(data)), picks)
        pick_batches = shuffled_batches(picks, cfg.batch_size, gen)
        ascent, batches = 0.0, 0
        model.train()
        for j, b in enumerate(progress(shuffled_batches(rest, cfg.batch_size, gen),
                                       f"AdvrBD: enhancement round {r + 1}/{rounds}")):
            xr, yr = pixels(data, b)
            xp, yp = pixels(data, pick_batches[j % len(pick_batches)])
            unlearn = F.cross_entropy(model(xp), yp).clamp(max=cap)
            loss = F.cross_entropy(model(xr), yr) - unlearn
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ascent += float(unlearn.detach())
            batches += 1
        logits, _ = forward_all(as_pair(model), data, desc="AdvrBD: enhanced model")
        wrong = np.flatnonzero(logits.argmax(1) != data.y)
        picks = np.union1d(picks, wrong)
        history.append({"round": r + 1, "picks_ce": ascent / max(batches, 1), "picks": len(picks),
                        "misclassified": len(wrong),
                        "accuracy_on_rest": float(np.mean(logits.argmax(1)[rest] == data.y[rest]))})
        log.info("enhancement round %d: %s", r + 1, history[-1])
    return model, picks, history


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """The same architecture with newly initialised weights (every module's own `reset_parameters`)."""
    torch.manual_seed(seed)
    fresh = clone_trainable(model)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    return fresh


def train_epochs(model: nn.Module, data, idx: np.ndarray, epochs: int, lr: float, cfg: PurifyConfig,
                 gen: torch.Generator, labels: np.ndarray | None = None, desc: str = "training") -> list[dict]:
    """SGD with a cosine schedule over `epochs` epochs on rows `idx`."""
    opt = make_optimizer(model, lr, cfg.momentum, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    rows = []
    for e in range(epochs):
        rows.append(finetune_epoch(model, opt, data, idx, gen, cfg.batch_size, augment=cfg.augment, labels=labels,
                                   desc=f"{desc} epoch {e + 1}/{epochs}"))
        sched.step()
    return rows


def advrbd(infected: nn.Module, session: Session, classes: int) -> tuple[nn.Module, Pools]:
    """The four stages, each checkpointed (stage k is `checkpoints/step-k.pt`), so a killed run resumes."""
    cfg = session.cfg
    data = session.data
    blob = session.latest()
    done = int(blob["step"]) if blob is not None else -1

    def stage_gen(stage: int) -> torch.Generator:
        return torch.Generator().manual_seed(cfg.seed * 7919 + stage)

    if done >= 0:
        kl, picks = blob["kl"].numpy(), blob["picks"].numpy()
    else:
        kl = patch_kl_scores(infected, data, cfg.kl_eps, cfg.kl_radius, seed=cfg.seed, desc="AdvrBD: KL scores")
        picks = pick_per_class(kl, data.y, cfg.seed_share)
        session.record({"step": 1, "stage": "kl-consistency", "picks": len(picks),
                        "pools": session.pool_quality(picks, np.zeros(0, np.int64))})
        session.save(0, {"kl": kl, "picks": picks})

    if done >= 1:
        clean = blob["clean"].numpy()
    else:
        _, clean, rounds = enhance_backdoor(infected, data, picks, cfg, classes, stage_gen(1),
                                            cfg.scaled(cfg.enhance_epochs))
        poison = np.setdiff1d(np.arange(len(data)), clean)
        session.record({"step": 2, "stage": "backdoor-enhancement", "rounds": rounds, "clean_pool": len(clean),
                        "poison_pool": len(poison), "pools": session.pool_quality(clean, poison)})
        session.save(1, {"kl": kl, "picks": picks, "clean": clean})
    poison = np.setdiff1d(np.arange(len(data)), clean)

    model = fresh_copy(infected, cfg.seed)
    if done >= 2:
        model.load_state_dict(blob["model"])
    else:
        epochs = train_epochs(model, data, clean, cfg.scaled(cfg.clean_epochs), 0.1, cfg, stage_gen(2),
                              desc="AdvrBD: clean model")
        session.record({"step": 3, "stage": "clean-model", "epochs": epochs}, model)
        session.save(2, {"kl": kl, "picks": picks, "clean": clean, "model": model})

    if done >= 3:
        model.load_state_dict(blob["model"])
    else:
        labels = data.y.copy()
        if len(poison):
            logits, _ = forward_all(as_pair(model), data, poison, desc="AdvrBD: relabelling")
            labels[poison] = logits.argmax(1)
        epochs = train_epochs(model, data, np.arange(len(data)), cfg.scaled(cfg.relearn_epochs), cfg.lr, cfg,
                              stage_gen(3), labels=labels, desc="AdvrBD: relearning")
        session.record({"step": 4, "stage": "relabel-relearn",
                        "relabelled": int(np.sum(labels[poison] != data.y[poison])), "epochs": epochs}, model)
        session.save(3, {"kl": kl, "picks": picks, "clean": clean, "model": model})
    return model.eval(), Pools(clean, poison, kl.astype(np.float64), np.full(len(data), np.nan))
