"""AdvrBD: a backdoor-robust model from a poisoned dataset without auxiliary data.

Four stages, sharing pudrt's loops:

1. **KL-consistency**: perturb each sample inside a random square patch (half-width
   `kl_radius`) within an L∞ ball of `kl_eps`, maximising KL(f(x) ‖ f(x+δ)).
   Poisons are dominated by their trigger and barely move (low KL); the highest-KL
   `seed_share` of each class are the first clean picks, the lowest-KL
   `suspect_share` of DATA the suspects. Where the poisons are fragile instead
   (a warp, below), the sides swap (`kl_partition`).
2. **Backdoor enhancement**: a copy of the infected model learns the suspects and
   unlearns the picks (loss ascent, capped at 2·ln K) for `enhance_passes` passes
   over the picks. Its clean features go and the trigger shortcut stays, so it
   still gives a poison its (target) label with near certainty and a clean image
   not: rows whose label it gives probability above `enhance_cut` are the poisons.
3. **Clean model**: a freshly initialised copy of the architecture is trained on
   the rest.
4. **Relabel and relearn**: the poisons are relabelled with the clean model's
   predictions and it is fine-tuned on everything.

Stage 2 is pudrt's reading of the paper. The first version had the copy learn
every row outside the picks and took what it then misclassified as clean, for 5
rounds. On the 1,500-per-class BadNets resnet9w16 (benchmarks, 2026-11-29) that
copy kept the clean task on the 88% clean rows it learnt, so the clean part
grew only from 1,500 to 4,202 rows (99.2% clean, 29.2% of the clean rows) and
the from-scratch model trained on it reached 53.9% C-Acc. Learning only the 750
lowest-KL rows (52% poisons) for one pass over the picks instead: the label's
probability ranks poisons above clean rows with AUROC 0.999; above 0.999 sit 728
rows, 96.8% poisons, 96.4% of them (poisons' 1st percentile 0.990, clean rows'
99th 0.996; the argmax split would call 8,026 rows poisons). Iterating (learning
what the copy gets right, unlearning what it gets wrong) made the split worse.

A warping trigger (WaNet) reverses stage 1: a patch perturbation moves its
poisons more than clean images, not less. On full CIFAR-10 (resnet9w16) WaNet's
poisons had median patch KL 1.40 against clean rows' 0.17, and the paper's
orientation left 78.1% ASR after AdvrBD: its suspects (the 2,500 lowest-KL rows)
held 530 poisons, its picks 996, and the enhanced copy's label probability
ranked poisons above clean rows with AUROC 0.72. `kl_partition` therefore reads
the orientation from the found target class (`kl_orientation` "auto"): an
all-to-one attack's poisons carry its label, so the tail of the KL scale that
holds more of the class is theirs (the high tail must also hold more of it
than DATA does, or the paper's side stands). Measured on the full-set runs' stage-1 KL:
the target's share of the lowest / highest 5% was 0.30 / 0.68 on WaNet, and
1.00 / 0.07, 0.50 / 0.01 and 0.43 / 0.00 on BadNets, Blend and SIG (the class
is 0.2 of DATA, 0.1 for the clean-label SIG). With fragile poisons the picks are each class's lowest-KL
`seed_share`, without the target class (whose most robust rows hold a share
of its poisons: 646 of its 1,000 on WaNet), and the enhancement makes
`enhance_passes_fragile` passes. Rerunning stage 2 from the WaNet run's stage
1 (one-off script, 2026-11-30): AUROC 0.965 and 81% of the poisons above the
cut (95% precision) with one pass; with two, 98.6-99.4% of them at 92-95%
precision over three seeds (three passes 99.7%, 91%). Two passes in the
paper's orientation found fewer: Blend's recall 100% -> 99.1%, SIG's
94.9% -> 41.8%, so it keeps one.

A clean-label attack breaks stage 4: SIG puts its signal on every image of the
target class, so stage 2 rightly finds the whole class poisoned, stage 3's
model never sees a clean airplane and relabelling moves them all to other
classes (1,500 SIG images per class, resnet9w16: ASR 99.3% -> 0.8%, but 0% of
the test airplanes recognised before and after). With `cfg.shared_pattern`
AdvrBD therefore uses PUD's shared pattern (pattern.py) of the class target
discovery found: when nearly every row of the class carries it, stages 3 and 4
train on those rows with the pattern taken out, under their own label (they are
not relabelled), plus copies of other classes' rows carrying it under their own
labels. A dirty-label class is left to the relabelling, which already removes
its trigger (Blend and BadNets, benchmarks/RESULTS.md), so its pattern is only
reported. Measured on that SIG subset: C-Acc 72.99% -> 77.75%, ASR 0.17%, 71.4%
of the test airplanes. On full CIFAR-10 it gave back only 29.7%: stage 3's
model, trained from scratch, learnt the residue that taking the pattern out
leaves (clipped pixels, the estimate at the borders) as the class, reading
97.6% of the restored training airplanes and 38.9% of the test ones. Half the
copies (`cfg.pattern_round_trip`) therefore have the pattern put in and taken
back out, so the residue also sits on other classes' rows: stage 3's model
53.0%, the run C-Acc 82.1%, ASR 0.2%, airplanes 62.5% (benchmarks/RESULTS.md).

The paper's AdvrBD trains on no adversarial example, so its adv_acc stays at
the infected model's (0.2-0.6% on full CIFAR-10; 0.1-1.1% after it). pudrt's
therefore makes the last relearning epoch adversarial
(`cfg.relearn_adv_epochs`, default 1; 0 is the paper's): PGD examples under
the relabelled labels (PUD's budget), mixed with the clean batch at
`cfg.clean_weight` 0.9. At the full schedule (5 epochs) the cosine schedule
has then brought the learning rate down to a tenth, so the epoch buys
robustness for little clean accuracy (at `--epochs-scale` 0.2 the only
relearning epoch is that one, at the full rate). Measured on full CIFAR-10
BadNets, rerunning stage 4 from the run's stage-3 checkpoint (one-off script,
2026-11-30): C-Acc / ASR / adv_acc 85.8 / 1.5 / 0.1% without it (the run);
with it, clean weight 0.9: 84.2 / 1.5 / 4.0%; 0.8: 81.3 / 1.8 / 10.2%; 0.5:
75.4 / 2.2 / 16.2% (infected 84.8 / 96.2 / 0.6%). The adversarial epoch first and four clean epochs after:
85.6 / 1.5 / 1.1% (the clean epochs wash the robustness out). At 1,500 SIG
images per class, clean weight 0 cost 11 points of C-Acc (66.8%, adv_acc 7.9%).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pudrt.attacks.pgd import PGD
from pudrt.errors import PudrtError
from pudrt.models import as_pair
from pudrt.progress import progress
from pudrt.purify.config import PurifyConfig
from pudrt.purify.loops import (
    Copies,
    clone_trainable,
    finetune_epoch,
    forward_all,
    make_optimizer,
    pixels,
    shuffled_batches,
)
from pudrt.purify.pattern import RestoredRows, SharedPattern, shared_pattern
from pudrt.purify.progressive import Pools
from pudrt.purify.screening import patch_kl_scores, pick_per_class
from pudrt.purify.session import Session

log = logging.getLogger(__name__)


def kl_partition(kl: np.ndarray, labels: np.ndarray, target: int | None, cfg: PurifyConfig
                 ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Stage 1's clean picks and suspects from every row's patch KL, and what decided which side the poisons are
    on (module docstring): `cfg.kl_orientation`, or for "auto" the found target's share of the lowest- and
    highest-KL `suspect_share` of DATA (robust, the paper's, unless the highest holds more of it than the lowest
    and than DATA as a whole)."""
    size = max(1, round(cfg.suspect_share * len(kl)))
    order = np.argsort(kl, kind="stable")
    lowest, highest = order[:size], order[-size:]
    info: dict = {"kl_orientation": cfg.kl_orientation}
    fragile = cfg.kl_orientation == "fragile"
    if target is not None:
        shares = [round(float(np.mean(labels[tail] == target)), 4) for tail in (lowest, highest, order)]
        info.update({"target": target, "target_share_lowest_kl": shares[0], "target_share_highest_kl": shares[1],
                     "target_share": shares[2]})
        # swapped only where the high tail holds more of the class than the low one and than DATA does
        fragile = fragile or (cfg.kl_orientation == "auto" and shares[1] > max(shares[0], shares[2]))
    info["poisons"] = "fragile (high KL)" if fragile else "robust (low KL)"
    if not fragile:
        picks = pick_per_class(kl, labels, cfg.seed_share)
        return picks, np.setdiff1d(lowest, picks), info
    picks = pick_per_class(-kl, labels, cfg.seed_share)
    if target is not None:  # the target's most robust rows are not clean: they hold its robust poisons
        picks = picks[labels[picks] != target]
    return picks, np.setdiff1d(highest, picks), info


def enhance_backdoor(infected: nn.Module, data, picks: np.ndarray, suspects: np.ndarray, cfg: PurifyConfig,
                     classes: int, gen: torch.Generator, passes: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Stage 2: learn the suspects, unlearn the picks for `passes` passes over them (default
    `cfg.enhance_passes`); the rows whose label the copy then gives probability above `cfg.enhance_cut` are the
    poisons. Returns them, every row's label probability, and a history row."""
    if not len(picks) or not len(suspects):
        return np.zeros(0, np.int64), np.zeros(len(data)), {"skipped": "no clean picks or no suspects to learn"}
    model = clone_trainable(infected)
    opt = make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    cap = 2 * math.log(classes)
    ascent = learnt = 0.0
    model.train()
    per_pass = -(-len(picks) // cfg.batch_size)
    steps = max((passes or cfg.enhance_passes) * per_pass, cfg.enhance_min_steps)
    pick_batches: list[np.ndarray] = []
    suspect_batches: list[np.ndarray] = []
    for j in progress(range(steps), "AdvrBD: backdoor enhancement"):
        if j % per_pass == 0:  # a new pass over the picks, and the suspects reshuffled with it
            pick_batches = shuffled_batches(picks, cfg.batch_size, gen)
            suspect_batches = shuffled_batches(suspects, cfg.batch_size, gen)
        xs, ys = pixels(data, suspect_batches[j % per_pass % len(suspect_batches)])
        xp, yp = pixels(data, pick_batches[j % per_pass])
        learn = F.cross_entropy(model(xs), ys)
        unlearn = F.cross_entropy(model(xp), yp).clamp(max=cap)
        opt.zero_grad(set_to_none=True)
        (learn - unlearn).backward()
        opt.step()
        learnt += float(learn.detach())
        ascent += float(unlearn.detach())
    logits, _ = forward_all(as_pair(model), data, desc="AdvrBD: enhanced model")
    p_label = F.softmax(torch.from_numpy(logits).double(), 1)[torch.arange(len(data)), torch.from_numpy(data.y)]
    p_label = p_label.numpy()
    poison = np.flatnonzero(p_label > cfg.enhance_cut)
    row = {"steps": steps, "passes": round(steps / per_pass, 2), "suspects_ce": learnt / steps,
           "picks_ce": ascent / steps, "cut": cfg.enhance_cut, "above_cut": len(poison),
           "p_label_percentiles_5_50_95": np.percentile(p_label, [5, 50, 95]).round(6).tolist()}
    log.info("enhancement: %s", row)
    return poison, p_label, row


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
                 gen: torch.Generator, labels: np.ndarray | None = None, copies: Copies | None = None,
                 adv_epochs: int = 0, desc: str = "training") -> list[dict]:
    """SGD with a cosine schedule over `epochs` epochs on rows `idx` (with `copies`, loops.finetune_epoch's); the
    last `adv_epochs` of them train on PGD examples (`cfg.eps`, `cfg.steps`) under the rows' labels."""
    opt = make_optimizer(model, lr, cfg.momentum, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    pgd = PGD(model, eps=cfg.eps, alpha=cfg.pgd_alpha, steps=cfg.steps) if adv_epochs else None
    rows = []
    for e in range(epochs):
        rows.append(finetune_epoch(model, opt, data, idx, gen, cfg.batch_size, augment=cfg.augment, labels=labels,
                                   pgd=pgd if e >= epochs - adv_epochs else None, clean_weight=cfg.clean_weight,
                                   copies=copies, desc=f"{desc} epoch {e + 1}/{epochs}"))
        sched.step()
    return rows


def clean_label_pattern(infected: nn.Module, data, target: int | None, cfg: PurifyConfig, classes: int
                        ) -> SharedPattern | None:
    """The found target class's shared pattern when AdvrBD uses it (a clean-label class: `restores`); a pattern
    carrying only its evidence (`scale` None, "skipped" saying why) when it is a trigger of a dirty-label class;
    None when there is no target or `cfg.shared_pattern` is off."""
    if not cfg.shared_pattern or target is None:
        return None
    found = shared_pattern(infected, data, target, classes, seed=cfg.seed)
    if found.scale is None or (found.restores and cfg.pattern_restore):
        return found
    why = ("--no-pattern-restore: the class's rows are relabelled like any found poison" if found.restores else
           "AdvrBD uses the pattern only when nearly the whole class carries it (a clean-label attack); here "
           "relabelling the found poisons removes the trigger")
    return SharedPattern(target, found.pattern, None, {**found.evidence, "skipped": why})


def advrbd(infected: nn.Module, session: Session, classes: int, target: int | None = None
           ) -> tuple[nn.Module, Pools]:
    """The four stages, each checkpointed (stage k is `checkpoints/step-k.pt`), so a killed run resumes.
    `target` is target discovery's class: its share of the KL tails orients stage 1 (`kl_partition`), and its
    shared pattern is what stages 3 and 4 use for a clean-label attack."""
    cfg = session.cfg
    data = session.data
    blob = session.latest()
    done = int(blob["step"]) if blob is not None else -1
    if blob is not None and "suspects" not in blob:
        raise PudrtError(f"{session.out}: its checkpoints come from an earlier AdvrBD (before the suspects of "
                         "2026-11-29) and cannot be resumed; run again with --restart, or into a new folder")

    def stage_gen(stage: int) -> torch.Generator:
        return torch.Generator().manual_seed(cfg.seed * 7919 + stage)

    if done >= 0:
        kl, picks, suspects = blob["kl"].numpy(), blob["picks"].numpy(), blob["suspects"].numpy()
        fragile = bool(blob.get("fragile", torch.tensor(False)))  # checkpoints before 2026-11-30: the paper's side
    else:
        kl = patch_kl_scores(infected, data, cfg.kl_eps, cfg.kl_radius, seed=cfg.seed, desc="AdvrBD: KL scores")
        picks, suspects, sides = kl_partition(kl, data.y, target, cfg)
        fragile = sides["poisons"].startswith("fragile")
        if fragile:
            log.warning("AdvrBD: class %s's poisons look fragile under a patch perturbation (share of the class in "
                        "the lowest / highest %.0f%% of KL: %.2f / %.2f); suspects are the highest-KL rows",
                        target, 100 * cfg.suspect_share, sides.get("target_share_lowest_kl", float("nan")),
                        sides.get("target_share_highest_kl", float("nan")))
        session.record({"step": 1, "stage": "kl-consistency", "picks": len(picks), "suspects": len(suspects),
                        "sides": sides, "pools": session.pool_quality(picks, suspects)})
        session.save(0, {"kl": kl, "picks": picks, "suspects": suspects, "fragile": torch.tensor(fragile)})
    sides_state = {"kl": kl, "picks": picks, "suspects": suspects, "fragile": torch.tensor(fragile)}

    if done >= 1:
        clean, p_label = blob["clean"].numpy(), blob["p_label"].numpy()
    else:
        passes = cfg.enhance_passes_fragile if fragile else cfg.enhance_passes
        poison, p_label, row = enhance_backdoor(infected, data, picks, suspects, cfg, classes, stage_gen(1), passes)
        clean = np.setdiff1d(np.arange(len(data)), poison)
        session.record({"step": 2, "stage": "backdoor-enhancement", **row, "clean_pool": len(clean),
                        "poison_pool": len(poison), "pools": session.pool_quality(clean, poison)})
        session.save(1, {**sides_state, "clean": clean, "p_label": p_label})
    poison = np.setdiff1d(np.arange(len(data)), clean)
    state = {**sides_state, "clean": clean, "p_label": p_label}

    # the pattern is re-estimated on resume (seconds), but not for a run that has ended
    pattern = clean_label_pattern(infected, data, target, cfg, classes) if done < 3 else None
    restoring = pattern is not None and pattern.scale is not None
    restored = np.flatnonzero(data.y == target) if restoring else np.zeros(0, np.int64)
    rows = RestoredRows(data, pattern) if restoring else data  # what the training loops read
    copies = ((lambda x, y, g: pattern.copies(x, y, cfg.pattern_share, g, cfg.pattern_round_trip))
              if restoring else None)
    relabel = np.setdiff1d(poison, restored)  # restored rows keep their (correct) label

    model = fresh_copy(infected, cfg.seed)
    if done >= 2:
        model.load_state_dict(blob["model"])
    else:
        epochs = train_epochs(model, rows, np.union1d(clean, restored), cfg.scaled(cfg.clean_epochs), 0.1, cfg,
                              stage_gen(2), copies=copies, desc="AdvrBD: clean model")
        row = {"step": 3, "stage": "clean-model", "epochs": epochs}
        if pattern is not None:
            row["shared_pattern"] = {**pattern.evidence, "restored_rows": len(restored)}
        session.record(row, model)
        session.save(2, {**state, "model": model})

    if done >= 3:
        model.load_state_dict(blob["model"])
    else:
        labels = data.y.copy()
        if len(relabel):
            logits, _ = forward_all(as_pair(model), data, relabel, desc="AdvrBD: relabelling")
            labels[relabel] = logits.argmax(1)
        epochs = train_epochs(model, rows, np.arange(len(data)), cfg.scaled(cfg.relearn_epochs), cfg.lr, cfg,
                              stage_gen(3), labels=labels, copies=copies,
                              adv_epochs=min(cfg.relearn_adv_epochs, cfg.scaled(cfg.relearn_epochs)),
                              desc="AdvrBD: relearning")
        session.record({"step": 4, "stage": "relabel-relearn", "restored": len(restored),
                        "relabelled": int(np.sum(labels[relabel] != data.y[relabel])), "epochs": epochs}, model)
        session.save(3, {**state, "model": model})
    # score: 1 - the enhanced copy's probability of the label (higher = more likely clean)
    return model.eval(), Pools(clean, poison, 1.0 - p_label.astype(np.float64), np.full(len(data), np.nan))
