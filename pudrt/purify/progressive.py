"""Progressive purification: PUD (Niu et al.) and PBE (Mu et al., CVPR 2023) share this loop.

The first clean pool is screened by KL-consistency (see screening.py; the
authors drew it at random, which carries the poison ratio into it). Each step
fine-tunes the student on the current clean pool with untargeted PGD examples
labelled with their own class (all epochs of the first step, the first
`adv_epochs_later` of later ones; `epochs_scale` shrinks these counts too, at
least one epoch each, so a small scale is mostly adversarial: it erases the
backdoor but costs clean accuracy that the long last step would win back).
Then it re-ranks all of DATA by how consistently
the infected model and the judge (PUD: the EMA teacher; PBE: the student) read
each sample, and takes the top `rates[k]` as the next clean pool. PUD also
removes the samples SPECTRE flags in the suspected target class and unlearns
the poison pool (bottom `poison_share` ∪ flagged) under an L1 anchor.

PUD filters the target class with an anchored fit by default (`target_fit`,
pudrt's change; scores/anchored.py): the target-class rows of the KL-screened
first pool are trusted clean, and whatever lies beyond the χ² quantile of a
Gaussian fit on them is flagged. The authors' SPECTRE assumes the clean part
is the class's tighter majority; an all-to-one attack at 10% breaks that, and
on full CIFAR-10 Blend its flags removed every clean airplane from the pools.
Anchors fail too when the poisons survive the patch screening (WaNet's warp
is global), so each step checks the filter against the judge (`orientation`)
and refits on the rows the judge confirms when the filter is inverted.

PUD also gates the found target class (`target_gate`, pudrt's addition): its
samples whose patch KL falls below target discovery's 5th percentile are
trigger-dominated, so they never enter a clean pool, always sit in the poison
pool, and are unlearned with a bounded negative-learning loss (loops.py)
before step 1 and once after each step. Why: the authors' loop cannot start
from an infected teacher. Measured on full CIFAR-10 BadNets (resnet9w16,
C-Acc 84.8 / ASR 95.7), step 1 at scale 0.1 left ASR at 41%, the teacher then
read poisons as clean, 4-5% residual poisons in the growing clean pool
re-taught the backdoor (ASR 82% after step 2, 89.6% at the end), and the
authors' unlearning (−0.003·CE) moved ASR by a few points at most. On a gate of
2,200 rows there (a stricter cut; 99.8% poisons), one negative-learning pass
alone took ASR to 2.8% (C-Acc 83.3) before any adversarial step, where one pass
of the authors' unlearning left it at 85%. With the gate (4,075 rows at
discovery's cut, 95.6% poisons) the teacher starts clean, and the consistency
ranking keeps the poisons out of the clean pools from then on: ASR 0.08% after
step 5 (README, Benchmarks).

PUD also unlearns the found target class's shared pattern (`shared_pattern`,
pudrt's addition; pattern.py): when the high-passed difference between the
class's mean image and the other classes' is a trigger to the infected model,
every epoch trains on copies of non-target rows carrying it under their own
labels. A clean-label attack (SIG) needs this: its signal is on every image of
the target class, so the pools hold no clean part of the class, and clean
fine-tuning re-teaches the signal (on full CIFAR-10 the finish took ASR from 46%
back to 92.8% without it). When nearly every row of the class carries the pattern (a clean-label attack:
the class holds no clean row, so copies alone leave it unlearnt), PUD trains
on those rows with the pattern taken out (`restore_pools`, pattern.RestoredRows):
they join every clean pool, as many as the other classes hold there on average,
and the gate and the target-class filter, which would only remove them again,
are not used.

After the last step PUD runs a short finish (`finish_epochs`, pudrt's
addition): the authors' last step ends on data purification and unlearning,
which cost full-CIFAR-10 BadNets about 5 points of C-Acc (79.1 where the last
clean epoch had trained to 87% on the pool). One clean epoch on the final pool
with the learning rate annealed to 0, the gated set unlearned alongside, ended
the benchmark run at C-Acc 84.4, ASR 0.8%, adv_acc 3.2% (infected 84.8 / 95.7 / 1.2)
with SPECTRE as the target-class filter, at 84.8 / 1.4% / 3.6% with the anchored fit.
The gated set is no longer unlearned in the finish (config.finish_negatives): its
clean airplanes cost the target class 3.3-3.4 points there for 0.1-0.2 points of ASR.
Since 2026-12-01 a tenth of the finish's loss is on PGD examples of the batch
(config.finish_adv_weight): the later steps' clean epochs take back the robustness
step 1 built, and at the authors' full schedule the clean finish ended at the
infected model's adv_acc (0.6%); the mixed finish ended at 10.8%.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from pudrt.attacks.pgd import PGD
from pudrt.models import as_pair
from pudrt.purify.config import PurifyConfig
from pudrt.purify.discovery import TargetEvidence
from pudrt.purify.loops import finetune_epoch, forward_all, make_optimizer, negative_epoch, unlearn_epoch
from pudrt.purify.pattern import RestoredRows, shared_pattern
from pudrt.purify.screening import gate_class, screened_pool
from pudrt.purify.session import Session
from pudrt.purify.teacher import MeanTeacher
from pudrt.scores import anchored_scores, consistency_scores, flag_top, spectre_class
from pudrt.scores.anchored import MIN_ANCHORS_PER_DIRECTION, K

log = logging.getLogger(__name__)


@dataclass
class Pools:
    clean: np.ndarray
    poison: np.ndarray
    scores: np.ndarray
    """Consistency score of every row (higher = more likely clean); NaN before the first ranking."""
    spectre: np.ndarray
    """Target-class filter score of rows in the suspected target class (higher = more suspect: the anchored fit's
    squared Mahalanobis distance, or SPECTRE's QUE score); NaN elsewhere."""


MIN_ANCHORS = MIN_ANCHORS_PER_DIRECTION * K
"""Anchors the anchored fit needs to use all of its K principal directions; with fewer, SPECTRE runs."""
MAX_FLAGGED_SHARE = 0.75
"""The target-class filter never flags more than this share of the class, so some of it stays trainable."""
ORIENTATION_MARGIN = 0.1
"""How much less often than elsewhere the judge must agree with the label on the rest of the class."""


@dataclass
class Split:
    """One step's data purification: the pools, what the target-class filter saw, its flags, and the anchors the
    next step's filter trusts (replaced when the judge found this step's filter inverted)."""

    pools: Pools
    info: dict
    flagged: np.ndarray
    anchors: np.ndarray | None
    anchors_from: str
    """"first_pool" (target_anchors) or "judge" (rows the judge confirmed after an inverted fit)."""


def orientation(judge_pred: np.ndarray, labels: np.ndarray, flagged: np.ndarray, target: int) -> dict:
    """Is the target-class filter inverted? Read from how often the judge agrees with the label on its flags, on
    the rest of the class, and on the other classes (`elsewhere`, the median class).

    An all-to-one poison is an image of another class, so once adversarial
    fine-tuning has erased the backdoor the judge reads it as that class. A
    filter that flags clean rows leaves the poisons in the rest of the class:
    the judge then agrees with the label on the rest far less often than
    elsewhere (by ORIENTATION_MARGIN), and on the flags more often than on the
    rest. Both must hold. The first alone also fires when an oriented filter
    misses poisons; the second alone fires when the judge still carries the
    backdoor, for it then reads poisons as the target more reliably than clean
    rows (the tests' resnet8: 99% vs 72%). A judge with the backdoor agrees on
    the rest as often as elsewhere, and the check then says nothing.

    Measured after step 1 on full CIFAR-10 (resnet9w16), flags / rest: the
    anchored fit 0.07 / 0.85 (BadNets) and 0.16 / 0.91 (Blend), where it
    flagged poisons; 0.85 / 0.37 on WaNet, where the first pool's anchors were
    97% poisons and it flagged clean airplanes; SPECTRE 0.65 / 0.08 on Blend.
    On the tests' BadNets resnet8 with 100 poisons for anchors and a clean
    resnet8 as the judge: 0.39 / 0.28, elsewhere 0.64.
    """
    members = np.flatnonzero(labels == target)
    rest = np.setdiff1d(members, flagged)
    agree = [round(float(np.mean(judge_pred[r] == target)), 4) if len(r) else None for r in (flagged, rest)]
    per_class = [np.mean(judge_pred[labels == c] == c) for c in np.unique(labels) if c != target]
    elsewhere = round(float(np.median(per_class)), 4) if per_class else None
    inverted = (None not in agree and elsewhere is not None and agree[0] > agree[1]
                and elsewhere - agree[1] > ORIENTATION_MARGIN)
    return {"judge_agrees_flagged": agree[0], "judge_agrees_rest": agree[1], "judge_agrees_elsewhere": elsewhere,
            "inverted": bool(inverted)}


def anchored_filter(features: np.ndarray, members: np.ndarray, inside: np.ndarray, cap: int
                    ) -> tuple[np.ndarray, np.ndarray, dict]:
    """The anchored fit on the class `members` (row indices) with the anchors at positions `inside` (into
    `members`): its scores, the rows it flags (at most `cap`) and what it saw."""
    fit = anchored_scores(features[members], inside)
    hits = fit.flagged if len(fit.flagged) <= cap else flag_top(fit.scores, cap)
    return fit.scores, members[hits], {"fit": "anchored", "anchors": len(inside), "anchors_kept": len(fit.anchors),
                                       "rounds": fit.rounds, "k": fit.k, "cut": round(fit.cut, 2),
                                       "beyond_cut": len(fit.flagged), "flagged": len(hits)}


def split_pools(consistency: np.ndarray, labels: np.ndarray, infected_pred: np.ndarray, judge_pred: np.ndarray,
                infected_features: np.ndarray | None, target: int | None, rate: float, poison_share: float,
                use_spectre: bool, anchors: np.ndarray | None = None, anchors_from: str = "first_pool") -> Split:
    """New clean pool = top `rate` by consistency minus the target-class filter's flags; poison pool = bottom ∪
    flagged.

    With `anchors` (rows of the target class trusted to be clean) the filter is
    the anchored fit (scores/anchored.py); without them, or with fewer than
    MIN_ANCHORS, SPECTRE seeded with the clean pool. Measured on the tests'
    5,000-image scenario, where the first pool holds 24 target-class rows: the
    anchored fit could use only 6 directions and caught 82% of the poisons, and
    ASR after step 5 was 7.9% where SPECTRE's gave 1.1%.

    Either filter can come out inverted (`orientation`). Then the anchors are
    replaced by the class's rows in the new clean pool that the judge reads as
    the target class, and the anchored fit runs on them; from then on they are
    the anchors. Measured after step 1 on full CIFAR-10 WaNet (resnet9w16),
    where the first pool's anchors were 486 poisons of 502: 207 such rows, no
    poison among them, flagged 5,049 rows at 98.0% precision and 98.9% recall
    (the inverted fit: 2,432 rows, 3.3% poisons). With fewer than MIN_ANCHORS of
    them, or if that fit is inverted too, nothing is flagged: an inverted
    filter removes the class's clean samples from every clean pool.
    """
    n = len(consistency)
    order = np.argsort(-consistency, kind="stable")
    clean = order[: int(round(rate * n))]
    poison = order[n - max(1, int(round(poison_share * n))):]
    spectre = np.full(n, np.nan)
    info: dict = {}
    flagged = np.zeros(0, np.int64)
    if use_spectre and target is not None and infected_features is not None:
        members = np.flatnonzero(labels == target)
        cap = max(1, int(MAX_FLAGGED_SHARE * len(members)))
        info = {"class": target}
        inside = np.flatnonzero(np.isin(members, anchors)) if anchors is not None else np.zeros(0, np.int64)
        if anchors is not None and len(inside) < MIN_ANCHORS:
            info["anchored_fit_skipped"] = f"{len(inside)} anchors, fewer than {MIN_ANCHORS}"
        if anchors is not None and len(inside) >= MIN_ANCHORS:
            scores, flagged, row = anchored_filter(infected_features, members, inside, cap)
            row["anchors_from"] = anchors_from
        else:
            # Expected poisons in the target class: the samples the two models disagree on there.
            expected = int(np.sum(infected_pred[members] != judge_pred[members]))
            expected = int(np.clip(expected, max(1, len(members) // 100), len(members) // 2))
            in_clean = np.zeros(n, bool)
            in_clean[clean] = True
            res = spectre_class(infected_features[members], expected, seed=in_clean[members])
            scores = res.scores
            flagged = members[flag_top(res.scores, min(int(1.5 * expected), cap))]
            row = {"fit": "spectre", "expected_poisons": expected, "flagged": len(flagged), "k": res.k,
                   "excess": round(res.excess, 3)}
        check = orientation(judge_pred, labels, flagged, target)
        info.update({**row, "orientation": check})
        if check["inverted"]:
            confirmed = np.flatnonzero(np.isin(members, clean) & (judge_pred[members] == target))
            log.warning("the %s target-class filter is inverted: the judge reads %.0f%% of its flags as class %d and "
                        "%.0f%% of the rest; refitting on the %d class rows of the clean pool it confirms",
                        row["fit"], 100 * check["judge_agrees_flagged"], target, 100 * check["judge_agrees_rest"],
                        len(confirmed))
            info = {**{k: v for k, v in info.items() if k in ("class", "anchored_fit_skipped")},
                    "inverted": {**row, "orientation": check}}
            if len(confirmed) >= MIN_ANCHORS:
                scores, flagged, row = anchored_filter(infected_features, members, confirmed, cap)
                check = orientation(judge_pred, labels, flagged, target)
                info.update({**row, "anchors_from": "judge", "orientation": check})
            if len(confirmed) < MIN_ANCHORS or check["inverted"]:
                why = (f"{len(confirmed)} judge-confirmed anchors, fewer than {MIN_ANCHORS}"
                       if len(confirmed) < MIN_ANCHORS else "the refit on judge-confirmed anchors is inverted too")
                scores, flagged = np.full(len(members), np.nan), np.zeros(0, np.int64)
                info.update({"fit": "none", "flagged": 0, "dropped": why})
            else:
                anchors, anchors_from = members[confirmed], "judge"
        spectre[members] = scores
        clean = np.setdiff1d(clean, flagged, assume_unique=False)
        poison = np.union1d(poison, flagged)
    return Split(Pools(np.sort(clean), np.sort(poison), consistency, spectre), info, flagged, anchors, anchors_from)


def first_pool(infected: nn.Module, data, cfg: PurifyConfig) -> np.ndarray:
    """The first clean pool: a random `initial_clean` share of DATA, or (kl) the same number screened by
    KL-consistency out of a random candidate set `screen_factor` times larger."""
    n = len(data)
    size = min(n, max(cfg.batch_size, int(round(cfg.initial_clean * n))))
    candidates = np.random.default_rng(cfg.seed).permutation(n)
    if cfg.initial_pool == "random" or cfg.screen_factor == 1:
        return np.sort(candidates[:size])
    candidates = np.sort(candidates[: min(n, size * cfg.screen_factor)])
    return screened_pool(infected, data, size, candidates, cfg.kl_eps, cfg.kl_radius, seed=cfg.seed)


GATE_MIN_PRECISION = 0.8
"""The gate is unlearned only when at most this share of it is expected to be clean (see `target_gate`)."""


def target_gate(infected: nn.Module, data, evidence: TargetEvidence, cfg: PurifyConfig,
                quality: Callable[[np.ndarray], dict] | None = None) -> tuple[np.ndarray, dict]:
    """The found target class's patch-robust rows, or none when they cannot be trusted to be poisons.

    Negative learning unlearns whatever it is given, so the gate must be nearly
    all poisons. Its clean content is estimated without ground truth: an
    ordinary class keeps the median class's share below the cut
    (`evidence.robust_share`), so about that share of the target class's clean
    samples falls into the gate too. `quality` (rows -> precision/recall against
    ground truth, where DATA has it) is recorded for a skipped gate as well.
    """
    t = evidence.target_class
    if not cfg.target_gate or t is None or evidence.robust_cut is None:
        return np.zeros(0, np.int64), {}
    gated = gate_class(infected, data, t, evidence.robust_cut, cfg.kl_eps, cfg.kl_radius, seed=cfg.seed + 1)
    # as many of the class as fall below the cut in a median class, never more than the gate holds
    expected_clean = min(float(np.median(evidence.robust_share)) * int(np.sum(data.y == t)), len(gated))
    estimate = 1 - expected_clean / max(len(gated), 1)
    row = {"class": t, "rows": len(gated), "expected_clean_inside": round(expected_clean),
           "estimated_precision": round(estimate, 4), **(quality(gated) if quality is not None else {})}
    if not len(gated):
        return gated, {**row, "skipped": "no sample of the class falls below the cut"}
    if estimate < GATE_MIN_PRECISION:
        log.warning("target gate skipped: of its %d rows about %.0f are expected to be clean", len(gated),
                    expected_clean)
        return np.zeros(0, np.int64), {**row, "skipped": f"estimated precision {estimate:.2f} < "
                                                           f"{GATE_MIN_PRECISION}"}
    return gated, row


def target_anchors(first: np.ndarray, labels: np.ndarray, target: int | None, cfg: PurifyConfig
                   ) -> np.ndarray | None:
    """Rows of the target class that the anchored fit may trust as clean: those in the KL-screened first pool.

    None when the fit is SPECTRE's, or when the first pool was drawn at random
    (it then carries the class's poisons, which are its majority)."""
    if target is None or not cfg.spectre or cfg.target_fit != "anchored":
        return None
    if cfg.initial_pool != "kl" or cfg.screen_factor == 1:
        log.warning("the anchored target-class fit needs a KL-screened first pool; using SPECTRE")
        return None
    return np.sort(first[labels[first] == target])


def gate_pools(pools: Pools, gated: np.ndarray) -> Pools:
    """Gated rows leave the clean pool and join the poison pool."""
    if len(gated):
        pools.clean = np.setdiff1d(pools.clean, gated)
        pools.poison = np.union1d(pools.poison, gated)
    return pools


def restore_pools(pools: Pools, restored: np.ndarray, labels: np.ndarray) -> Pools:
    """Restored rows (the target class of a clean-label attack, its shared pattern taken out; in a fixed random
    order) join the clean pool as many as the other classes hold there on average, so the pool stays balanced,
    and leave the poison pool.

    All of them at once swamped the small early pools: on 1,500 SIG images per class (resnet9w16, full test set),
    step 1 trained on 750 rows plus 1,500 restored airplanes and read 99.8% of the test airplanes as airplanes at
    C-Acc 23.7% (infected 73.0%)."""
    if len(restored):
        target = labels[restored[0]]
        others = labels[np.setdiff1d(pools.clean, restored)]
        counts = np.bincount(others[others != target])
        counts = counts[counts > 0]
        share = int(round(float(counts.mean()))) if len(counts) else len(restored)
        pools.clean = np.union1d(np.setdiff1d(pools.clean, restored), restored[:share])
        pools.poison = np.setdiff1d(pools.poison, restored)
    return pools


def progressive_purify(student: nn.Module, infected: nn.Module, session: Session, evidence: TargetEvidence,
                       stop_after: int | None = None) -> tuple[nn.Module, Pools]:
    """Run PUD or PBE (per `session.cfg`) from the infected model; returns the student and the final pools.

    `evidence` is target discovery's answer: SPECTRE reads its class, and with
    `cfg.target_gate` its patch-KL cut gates that class (`target_gate`).
    """
    cfg: PurifyConfig = session.cfg
    data = session.data
    target = evidence.target_class
    n = len(data)
    infected_pair = as_pair(infected)
    infected_logits, infected_feats = forward_all(infected_pair, data, desc="infected model")
    infected_pred = infected_logits.argmax(1)
    anchor = [p.detach().clone() for p in student.parameters()]
    teacher = MeanTeacher(student, cfg.ema_decay) if cfg.teacher else None
    steps = len(cfg.epochs)
    blob = session.latest()
    first = 0 if blob is None else int(blob["step"]) + 1
    # the pattern is re-estimated on resume (about 10 s on full CIFAR-10), but not for a run that has ended
    pattern = (shared_pattern(infected, data, target, infected_logits.shape[1], seed=cfg.seed)
               if cfg.shared_pattern and target is not None and first <= steps else None)
    copies = ((lambda x, y, g: pattern.copies(x, y, cfg.pattern_share, g))
              if pattern is not None and pattern.scale is not None else None)
    restoring = pattern is not None and pattern.restores and cfg.pattern_restore
    restored = (np.random.default_rng(cfg.seed + 2).permutation(np.flatnonzero(data.y == target)) if restoring
                else np.zeros(0, np.int64))
    train_rows = RestoredRows(data, pattern) if restoring else data  # what the training loops read
    gate_row: dict = {}
    if blob is None:
        if restoring:
            gated = np.zeros(0, np.int64)
            gate_row = {"class": target, "skipped": "every row of the class carries its shared pattern: the rows are "
                                                    "restored and trained on instead"}
        else:
            gated, gate_row = target_gate(infected, data, evidence, cfg,
                                          quality=lambda r: session.pool_quality(np.zeros(0, int), r))
        pools = gate_pools(Pools(first_pool(infected, data, cfg), np.zeros(0, np.int64), np.full(n, np.nan),
                                 np.full(n, np.nan)), gated)
        anchors, anchors_from = target_anchors(pools.clean, data.y, target, cfg), "first_pool"
        pools = restore_pools(pools, restored, data.y)
        if len(gated):
            opt = make_optimizer(student, cfg.lr, cfg.momentum, cfg.weight_decay)
            gen = torch.Generator().manual_seed(cfg.seed * 7919 - 1)
            gate_row["unlearning"] = [
                negative_epoch(student, opt, train_rows, pools.clean, gated, gen, cfg.batch_size, cfg.gate_weight,
                               desc=f"target gate: unlearning {i + 1}/{cfg.gate_passes}")
                for i in range(cfg.gate_passes)]
    else:
        student.load_state_dict(blob["student"])
        if teacher is not None:
            teacher.model.load_state_dict(blob["teacher"])
            teacher.updates = int(blob["teacher_updates"])
        pools = Pools(blob["clean"].numpy(), blob["poison"].numpy(), blob["scores"].numpy(),
                      blob["spectre"].numpy())
        gated = blob["gated"].numpy() if "gated" in blob else np.zeros(0, np.int64)
        anchors = blob["anchors"].numpy() if blob.get("anchors") is not None else None
        anchors_from = blob.get("anchors_from", "first_pool")

    def checkpoint(k: int) -> None:
        session.save(k, {"student": student, "teacher": teacher.model if teacher is not None else None,
                         "teacher_updates": torch.tensor(teacher.updates if teacher is not None else 0),
                         "clean": pools.clean, "poison": pools.poison, "scores": pools.scores,
                         "spectre": pools.spectre, "gated": gated, "anchors": anchors,
                         "anchors_from": anchors_from})

    pgd = PGD(student, eps=cfg.eps, alpha=cfg.pgd_alpha, steps=cfg.steps)  # the steps' and the finish's
    for k in range(first, steps):
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + k)
        epochs = cfg.scaled(cfg.epochs[k])
        adv_epochs = epochs if k == 0 else min(cfg.adv_epochs_later, epochs)
        opt = make_optimizer(student, cfg.lr, cfg.momentum, cfg.weight_decay)
        row: dict = {"step": k + 1, "train_pool": len(pools.clean), "epochs": []}
        if k == 0:
            row["first_pool"] = {"how": cfg.initial_pool, **session.pool_quality(pools.clean, np.zeros(0, int))}
            if anchors is not None:
                truth = session.pool_quality(anchors, np.zeros(0, int)).get("clean_pool", {})
                row["first_pool"]["target_anchors"] = {"rows": len(anchors), **(
                    {"poisons_inside": truth["poisons_inside"]} if truth else {})}
            if gate_row:
                row["target_gate"] = gate_row
            if pattern is not None:
                row["shared_pattern"] = {**pattern.evidence, "restored_rows": len(restored)}
        for e in range(epochs):
            stats = finetune_epoch(student, opt, train_rows, pools.clean, gen, cfg.batch_size,
                                   pgd=pgd if e < adv_epochs else None, teacher=teacher,
                                   consistency_weight=cfg.consistency_weight, augment=cfg.augment,
                                   clean_weight=cfg.clean_weight, copies=copies,
                                   desc=f"step {k + 1}/{steps} epoch {e + 1}/{epochs}")
            row["epochs"].append({k2: round(v, 5) if isinstance(v, float) else v for k2, v in stats.items()})
        if k < len(cfg.rates):
            judge = teacher.model if teacher is not None else student
            judge_logits, _ = forward_all(as_pair(judge), data, desc=f"step {k + 1}: consistency")
            cons = consistency_scores(infected_logits, judge_logits)
            split = split_pools(cons, data.y, infected_pred, judge_logits.argmax(1), infected_feats, target,
                                cfg.rates[k], cfg.poison_share, cfg.spectre and not restoring, anchors, anchors_from)
            pools, spectre_info, flagged = split.pools, split.info, split.flagged
            anchors, anchors_from = split.anchors, split.anchors_from
            pools = restore_pools(gate_pools(pools, gated), restored, data.y)
            row.update({"clean_pool": len(pools.clean), "poison_pool": len(pools.poison),
                        "disagree": int(np.sum(infected_pred != judge_logits.argmax(1)))})
            if spectre_info:
                truth = session.pool_quality(np.zeros(0, np.int64), flagged).get("poison_pool")
                row["spectre"] = {**spectre_info, **({"flagged_quality": truth} if truth else {})}
            if cfg.unlearn:
                row["unlearning"] = unlearn_epoch(student, opt, train_rows, pools.clean, pools.poison, anchor, gen,
                                                  cfg.batch_size, cfg.unlearn_weight, cfg.anchor_weight,
                                                  desc=f"step {k + 1}: unlearning")
            if len(gated) and cfg.gate_passes:
                row["gate_unlearning"] = negative_epoch(student, opt, train_rows, pools.clean, gated, gen,
                                                        cfg.batch_size, cfg.gate_weight,
                                                        desc=f"step {k + 1}: target gate")
            row["pools"] = session.pool_quality(pools.clean, pools.poison)
        session.record(row, student)
        checkpoint(k)
        if stop_after is not None and k + 1 >= stop_after and k + 1 < steps:
            log.info("stopping after step %d as asked; run again to resume", k + 1)
            return student, pools
    if cfg.finish_epochs and first <= steps:
        # the authors' last step ends on unlearning; a short annealed finish wins back the accuracy it costs (and, with
        # finish_adv_weight, some of the robustness the later steps' clean epochs took)
        epochs = cfg.finish_epochs
        opt = make_optimizer(student, cfg.lr, cfg.momentum, cfg.weight_decay)
        batches = epochs * -(-len(pools.clean) // cfg.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, batches))
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + steps)
        row = {"step": steps + 1, "stage": "finish", "train_pool": len(pools.clean), "lr": f"{cfg.lr} -> 0 (cosine)",
               "epochs": []}
        negatives = gated if cfg.gate_passes and cfg.finish_negatives else None
        if cfg.finish_adv_weight:
            row["adversarial_weight"] = cfg.finish_adv_weight
        for e in range(epochs):
            stats = finetune_epoch(student, opt, train_rows, pools.clean, gen, cfg.batch_size,
                                   pgd=pgd if cfg.finish_adv_weight else None,
                                   clean_weight=1 - cfg.finish_adv_weight, teacher=teacher,
                                   consistency_weight=cfg.consistency_weight, augment=cfg.augment,
                                   scheduler=schedule, negatives=negatives, negative_weight=cfg.gate_weight,
                                   copies=copies,
                                   desc=f"finish: epoch {e + 1}/{epochs}")
            row["epochs"].append({k2: round(v, 5) if isinstance(v, float) else v for k2, v in stats.items()})
        session.record(row, student)
        checkpoint(steps)
    return student, pools


def last_step(cfg: PurifyConfig) -> int:
    """The `step` of the last history row of a complete PUD/PBE run (the finish counts as a step)."""
    return len(cfg.epochs) + (1 if cfg.finish_epochs else 0)
