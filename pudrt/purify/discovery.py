"""Find the backdoor target class without being told it (PUD/PBE Figure 1, cross-checked with SPECTRE).

Evidence per class, each a robust z-score across classes (median and MAD, so
that ordinary confusions such as cat ↔ dog set the yardstick, not 1/K):

* **adversarial collapse**: the share of other classes' samples whose nearest
  adversarial class is this one. Each correctly classified sample is attacked
  by untargeted PGD at 1/8, 1/4, 1/2 and all of the budget in turn, and counts
  for the class it first flips into. An infected model's adversarial examples
  collapse into its target (the PUD/PBE observation), but at the full budget
  alone the flips land far from where the trigger's shortcut starts: a WaNet
  model's target took 38% of the nearest-class flips and 11% of the flips at
  8/255, the median class's share (NEAREST_BUDGETS).
* **adversarial survival**: the share of the class's correctly classified
  samples that PGD cannot flip. Relabelled poisons carry the trigger and are
  far more robust than clean images (the AdvrBD observation), so the target
  class, which holds them, survives where no other class does.
* **patch robustness**: the share of the class's samples whose prediction a
  patch-confined perturbation barely moves (KL-consistency, AdvrBD's stage 1),
  below the 5th percentile of all attacked samples. Poisons are dominated by
  their trigger and fill that tail; measured z of 10-20 for the target of
  BadNets and Blend models against ≤ 4.5 for every class of a clean one.
* **SPECTRE outlier mass**: the share of the class outside a robust Gaussian
  fit of its penultimate features. Reported, and added when positive; on small,
  briefly trained models it separates poorly (heavy-tailed features), so it
  cannot name a class by itself.
* **shared-pattern flips**: the share of other classes' images that the class's
  shared pattern (pattern.py: the high-passed difference of its mean image from
  the other classes'), added at up to 8× its size, turns into the class. A
  test of cause, not of association: an additive trigger carried by half of
  a class is in its mean image and does what the trigger does, while an
  ordinary class's mean pattern turns little (resnet9w16 on 1,500 images per
  class, 2026-11-29: the target 99-100% for BadNets, Blend and SIG, every
  ordinary class 0.6-12.8%, median 2-5%). Added when positive, with a floor of
  `PATTERN_FLOOR` on its spread so that natural flips count for little. A warp (WaNet)
  is not additive and leaves no such pattern; its nearest-class collapse is strong.

Each kind is one-sided: a backdoor may leave it or not, so only its positive
part adds. A warp's poisons are fragile, not robust, so a WaNet target reads
below the median class in patch robustness (z -1.4 on the model above), and a
clean-label (SIG) target draws fewer flips than the median class (z -3.4);
neither says the class is not the target.

A class is named only when its summed evidence is large (≥ `MIN_SCORE`) *and*
clearly ahead of every other class (by `MIN_GAP`): on a small model the
collapse alone is weak (DESIGN.md: about 20% of flips into the target, 11% by
chance), and a plain argmax would name a class for every clean model. Otherwise
the answer is "none": a clean model, or an all-to-all attack, which has no
single target.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn

from pudrt.attacks.pgd import PGD
from pudrt.progress import progress
from pudrt.purify.loops import forward_all, pixels
from pudrt.purify.pattern import SCALES, every_class_pattern, flip_rate
from pudrt.purify.screening import patch_kl_scores
from pudrt.scores import outlier_mass
from pudrt.train import Materialized

log = logging.getLogger(__name__)

MIN_SCORE = 10.0
"""Summed robust z-scores a class needs to be named. Measured (2026-11-22): the target of BadNets/Blend resnet8s
scored 19-54, of a full-CIFAR-10 BadNets resnet9w16 25.3; the top class of a clean resnet8 5.1-7.4. On an AMD EPYC
(2026-11-28, SURVIVAL_FLOOR): a clean resnet8's top class 7.9 (11.0 before the floor), a SIG resnet8's target
41.0 (64.9 before). With the nearest-class collapse and one-sided evidence (2026-11-29, EPYC with AVX-512): five
clean resnet9w16/resnet14w32s' top class 2.0-4.3, the tests' clean resnet8 with four seeds 6.0-8.8 (the 8.8 with a
lead of 4.3), three WaNet resnet9w16s' target 8.4, 9.2 and 10.8 (so two are still missed), BadNets, Blend and SIG
12.9, 21.9, 36.8."""
MIN_GAP = 5.0
"""... and its lead over the runner-up (infected: 17-36 measured; clean: 0.5-2.3)."""
NEAREST_BUDGETS = (1 / 8, 1 / 4, 1 / 2, 1)
"""Fractions of the discovery budget at which each sample is attacked in turn, until one flips it (its nearest
class). Measured (2026-11-29, AMD EPYC, PGD-10, 2,000 attacked samples, resnet9w16s trained on 1,500 images per
class; one-off scripts): three WaNet models (ASR 61-77%) sent 33-38% of their nearest-class flips into the target
(z 6.5-9.1) against 10-15% at 8/255 alone (z -0.1 to 0.9); five clean models' strongest class took 15-19% (z
0.8-3.7), the tests' clean resnet8s' 15-24% (z 1.2-4.7). BadNets, Blend and SIG resnet9w16s do not collapse at
either budget (z 0.7, 0.9, -3.4) and are named by their other evidence."""
ROBUST_QUANTILE = 0.05
"""Patch-KL quantile (over all attacked samples) below which a sample counts as barely moved."""
PATTERN_ROWS = 500
"""Other classes' images each class's shared pattern is tried on."""
PATTERN_FLOOR = 0.1
"""Least spread of the pattern flips across classes (the z-score's denominator): a class needs 10 points of flips
above the median class for each unit of evidence. Measured on the 1,500-per-class BadNets resnet9w16 (2026-11-29),
whose other evidence summed to 8.5 (a lead of 7.3) and named no class: class 0's pattern turned 13% / 51% / 94% /
99% of other images into it at 1× / 2× / 4× / 8×, every other class's at most 5.8% (z 9.6 against at most 0.3;
evidence 18.1 against 1.2). Blend and SIG targets: z 9.6 and 9.5; the most of an ordinary class: SIG's class 4,
12.8% (z 0.8)."""
SURVIVAL_FLOOR = 0.05
"""Least spread of survival across classes (the z-score's denominator). A clean model's classes differ in natural
robustness: a clean resnet8 kept 10.3% of its attacked airplanes and 0% of every other class (2026-11-28, AMD EPYC
build of the tests' model), which at the 0.02 floor of the other signals read z = 5.2 and, with the same
airplanes' patch robustness (z = 4.4), named class 0 of a clean model (evidence 11.0). Poisons that carry their
trigger survive far above that, or not at all (full-CIFAR-10 BadNets: 0% at ε = 8/255)."""


@dataclass
class TargetEvidence:
    target_class: int | None
    statement: str
    flips: list[int]
    """Samples of other classes whose nearest adversarial class (first untargeted PGD flip as the budget grows) is
    each class."""
    flip_share: list[float]
    flip_z: list[float]
    survival: list[float]
    """Share of each class's correctly classified attacked samples that PGD could not flip."""
    survival_z: list[float]
    robust_share: list[float]
    """Share of each class's attacked samples below the 5th percentile of patch KL over all of them."""
    robust_z: list[float]
    outlier_mass: list[float]
    mass_z: list[float]
    score: list[float]
    attacked: int
    flipped: int
    robust_cut: float | None = None
    """Patch KL at the 5th percentile over all attacked samples (the robust_share cut); PUD gates the found
    target class with it (progressive.py). None in target.json files written before it existed."""
    pattern_flip: list[float] = field(default_factory=list)
    """Share of other classes' images that each class's shared pattern turns into it (the most over SCALES);
    empty in target.json files written before it existed."""
    pattern_z: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _robust_z(values: np.ndarray, floor: float) -> np.ndarray:
    med = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - med))
    return (values - med) / max(mad, floor)


def adversarial_histogram(model: nn.Module, data: Materialized, idx: np.ndarray, classes: int, eps: float,
                          steps: int, batch_size: int = 256,
                          budgets: tuple[float, ...] = NEAREST_BUDGETS) -> dict[str, np.ndarray]:
    """Per class: nearest-class flips into it from other classes (`into`), such flips from other classes
    (`possible`), correctly classified samples attacked (`attacked`) and those PGD could not flip at `eps`
    (`survived`).

    Each sample is attacked at `eps` times each of `budgets` in turn, only while no smaller budget has
    flipped it, and counts for the class of its first flip: the class nearest to it, not wherever a full-size
    step happens to land (module docstring, "adversarial collapse")."""
    into = np.zeros(classes, np.int64)
    from_src = np.zeros(classes, np.int64)  # successful flips whose source class is c
    attacked = np.zeros(classes, np.int64)
    survived = np.zeros(classes, np.int64)
    attacks = [PGD(model, eps=eps * b, alpha=eps * b / 4, steps=steps) for b in budgets]
    for i in progress(range(0, len(idx), batch_size), "target discovery (PGD)", total=-(-len(idx) // batch_size)):
        x, y = pixels(data, np.sort(idx[i : i + batch_size]))
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        if not ok.any():
            continue
        x, y = x[ok], y[ok]
        attacked += np.bincount(y.numpy(), minlength=classes)
        for pgd in attacks:
            x_adv = pgd(x, y)
            with torch.no_grad():
                pred = model(x_adv).argmax(1)
            flipped = pred != y
            into += np.bincount(pred[flipped].numpy(), minlength=classes)
            from_src += np.bincount(y[flipped].numpy(), minlength=classes)
            x, y = x[~flipped], y[~flipped]
            if len(y) == 0:
                break
        survived += np.bincount(y.numpy(), minlength=classes)
    # Flips into t can only come from sources other than t.
    return {"into": into, "possible": int(into.sum()) - from_src, "attacked": attacked, "survived": survived}


@torch.no_grad()
def pattern_flips(model: nn.Module, data: Materialized, classes: int, rows: int = PATTERN_ROWS,
                  seed: int = 0) -> np.ndarray:
    """Per class: the largest share, over SCALES, of `rows` images of other classes that the class's shared
    pattern turns into it once added (0 for an empty class, and for all when fewer than 3 classes hold samples)."""
    patterns, present = every_class_pattern(data, classes)
    out = np.zeros(classes)
    if len(present) < 3:
        return out
    rng = np.random.default_rng(seed)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for c in progress(present, "target discovery (shared patterns)"):
            others = np.flatnonzero(data.y != c)
            x, _ = pixels(data, np.sort(rng.choice(others, min(rows, len(others)), replace=False)))
            pattern = torch.from_numpy(patterns[c])
            out[c] = max(flip_rate(model, x, pattern, s, c) for s in SCALES)
    finally:
        for m, mode in modes:
            m.training = mode
    return out


def discover_target(model: nn.Module, pair: nn.Module, data: Materialized, classes: int, eps: float = 8 / 255,
                    steps: int = 10, samples: int = 2000, per_class_features: int = 1000, kl_eps: float = 16 / 255,
                    kl_radius: int = 4, seed: int = 0) -> TargetEvidence:
    """Name the backdoor target class of `model`, with the evidence, or say there is none.

    `pair` is the same model returning (logits, features). Up to `samples`
    samples (stratified by label) are attacked; SPECTRE reads up to
    `per_class_features` samples of each class.
    """
    rng = np.random.default_rng(seed)
    per_class = max(1, samples // classes)
    pick, feat_pick = [], []
    for c in range(classes):
        members = np.flatnonzero(data.y == c)
        pick.append(rng.permutation(members)[:per_class])
        feat_pick.append(rng.permutation(members)[:per_class_features])
    idx = np.concatenate(pick)
    h = adversarial_histogram(model, data, idx, classes, eps, steps)
    into, possible = h["into"], h["possible"]
    share = into / np.maximum(possible, 1)
    flip_z = _robust_z(share, floor=0.02)
    survival = h["survived"] / np.maximum(h["attacked"], 1)
    survival_z = _robust_z(survival, floor=SURVIVAL_FLOOR)
    kl = patch_kl_scores(model, data, kl_eps, kl_radius, rows=np.sort(idx), seed=seed,
                         desc="target discovery (patch KL)")
    labels = data.y[np.sort(idx)]
    cut = float(np.quantile(kl, ROBUST_QUANTILE))
    low = kl < cut
    robust = np.array([low[labels == c].mean() if np.any(labels == c) else 0.0 for c in range(classes)])
    robust_z = _robust_z(robust, floor=0.02)

    mass = np.zeros(classes)
    for c in range(classes):
        if len(feat_pick[c]) >= 8:
            _, feats = forward_all(pair, data, np.sort(feat_pick[c]), desc=f"features of class {c}")
            mass[c], _ = outlier_mass(feats)
    mass_z = _robust_z(mass, floor=0.02)
    pattern = pattern_flips(model, data, classes, seed=seed)
    pattern_z = _robust_z(pattern, floor=PATTERN_FLOOR)
    score = _summed((flip_z, survival_z, robust_z, mass_z, pattern_z))
    order = np.argsort(-score)
    best, runner_up = int(order[0]), float(score[order[1]]) if classes > 1 else 0.0
    evidence = (f"{share[best]:.0%} of other classes' samples have class {best} as their nearest adversarial class "
                f"(median class {np.median(share):.0%}, z={flip_z[best]:.1f}); {survival[best]:.0%} of its samples "
                f"survive PGD "
                f"(median {np.median(survival):.0%}, z={survival_z[best]:.1f}); {robust[best]:.0%} barely move "
                f"under a patch perturbation (median {np.median(robust):.0%}, z={robust_z[best]:.1f}); "
                f"{mass[best]:.0%} lie outside a robust fit of its features (median {np.median(mass):.0%}, "
                f"z={mass_z[best]:.1f}); its shared pattern turns {pattern[best]:.0%} of other images into it "
                f"(median class {np.median(pattern):.0%}, z={pattern_z[best]:.1f})")
    if score[best] >= MIN_SCORE and score[best] - runner_up >= MIN_GAP:
        target = best
        statement = f"class {best}: {evidence}; evidence {score[best]:.1f} vs {runner_up:.1f} for the next class"
    else:
        target = None
        statement = (f"none: no class stands out (strongest is class {best} with evidence {score[best]:.1f}, next "
                     f"{runner_up:.1f}; naming one needs ≥ {MIN_SCORE:g} and a lead of ≥ {MIN_GAP:g}). This is a "
                     f"clean model, or an all-to-all attack, which has no single target. {evidence}")
    log.info("target discovery: %s", statement)
    return TargetEvidence(target, statement, into.tolist(), share.round(4).tolist(), flip_z.round(2).tolist(),
                          survival.round(4).tolist(), survival_z.round(2).tolist(), robust.round(4).tolist(),
                          robust_z.round(2).tolist(), mass.round(4).tolist(),
                          mass_z.round(2).tolist(), score.round(2).tolist(), int(h["attacked"].sum()),
                          int(into.sum()), cut, pattern.round(4).tolist(), pattern_z.round(2).tolist())


RESIDUAL_SIGNALS = ("flip_z", "survival_z", "robust_z", "pattern_z")
"""The evidence the residual check reads: how the model behaves under attack (nearest adversarial class, PGD
survival, patch robustness, the shared pattern). The outlier mass of the class's features is left out: it reads
DATA as much as the model, and the poisons stay in DATA under the target's label, so a purified model that reads
them as their own classes sets them apart and keeps the mass up. Measured on full CIFAR-10 (resnet9w16, 2026-11-30):
after PUD the found class's mass z was 7.4 / 7.8 / 7.3 (BadNets / Blend / WaNet, ASR 1.1-1.8%) and every other
signal under 0.4; after AdvrBD on BadNets (ASR 1.5%) mass z 12.7, the rest 0.3, and discovery named the class
again. After PBE, which left the backdoor in (ASR 89.6%, 1,500 images per class), patch robustness z 8.2 and the
shared pattern's z 9.7."""


def _summed(zs) -> np.ndarray:
    """Each class's evidence: each kind is one-sided (module docstring), so only its positive part adds."""
    return np.sum([np.maximum(np.asarray(z, dtype=float), 0) for z in zs], axis=0)


def behaviour_score(evidence: TargetEvidence) -> np.ndarray:
    """Each class's evidence summed over RESIDUAL_SIGNALS."""
    # pattern_z is empty in target.json files written before it existed
    return _summed([getattr(evidence, k) for k in RESIDUAL_SIGNALS if len(getattr(evidence, k))])


def residual_verdict(before: TargetEvidence, after: TargetEvidence) -> dict:
    """Compare target discovery on the input model (`before`, which named a class) with a run on the purified
    model (`after`, the same samples): when the purified model still singles out the found target by how it
    behaves (RESIDUAL_SIGNALS, named by the same MIN_SCORE / MIN_GAP rule), the backdoor likely persists.

    Another class named after purification is reported but is no sign of a backdoor by itself: adversarial
    fine-tuning alone can make a class stand out (a clean resnet8, the tests' model, after quick PUD: class 0,
    evidence 10.2, from its airplanes' natural robustness). Returns the history row, with `persists` and a
    `statement`; `evidence_*` are the behaviour evidence, `discovery_*` discovery's full scores."""
    t, named = before.target_class, after.target_class
    if t is None:
        raise ValueError("the residual check compares against a found target class")
    after_scores = behaviour_score(after)
    b, a = float(behaviour_score(before)[t]), float(after_scores[t])
    others = np.delete(after_scores, t)
    persists = a >= MIN_SCORE and a - (float(others.max()) if len(others) else 0.0) >= MIN_GAP
    signals = "adversarial flips, PGD survival, patch robustness and the shared pattern"
    if persists:
        statement = (f"the backdoor likely persists: the purified model still singles out class {t} (evidence "
                     f"{a:.1f} from {signals}; {b:.1f} before purification)")
    else:
        statement = (f"class {t} no longer stands out in how the purified model behaves (evidence {b:.1f} before, "
                     f"{a:.1f} after, from {signals}; naming a class needs ≥ {MIN_SCORE:g} and a lead of ≥ "
                     f"{MIN_GAP:g})")
        if named == t:
            statement += (f"; discovery still names it from the outlier mass of its features alone "
                          f"({after.outlier_mass[t]:.0%} outside a robust fit, z={after.mass_z[t]:.1f}): the "
                          f"poisons are still in DATA under its label, and a model that reads them as their own "
                          f"classes sets them apart")
        elif named is not None:
            statement += (f"; class {named} does (evidence {after.score[named]:.1f}), which adversarial fine-tuning "
                          f"alone can cause")
    return {"class": t, "evidence_before": round(b, 2), "evidence_after": round(a, 2),
            "discovery_before": round(float(before.score[t]), 2), "discovery_after": round(float(after.score[t]), 2),
            "named_after": named, "persists": bool(persists), "statement": statement}
