"""The residual check's verdict (discovery.residual_verdict) on evidence as full CIFAR-10 measured it."""

import numpy as np

from pudrt.purify.discovery import TargetEvidence, residual_verdict

CLASSES = 10


def evidence(target=None, **z):
    """Target discovery's answer with the given z-scores (lists over the classes; the rest zero)."""
    zs = {k: np.asarray(z.get(k, np.zeros(CLASSES)), float)
          for k in ("flip_z", "survival_z", "robust_z", "mass_z", "pattern_z")}
    score = sum(np.maximum(v, 0) for v in zs.values())
    zero = [0.0] * CLASSES
    return TargetEvidence(target, "", [0] * CLASSES, zero, zs["flip_z"].tolist(), zero, zs["survival_z"].tolist(),
                          zero, zs["robust_z"].tolist(), [0.44] + [0.15] * (CLASSES - 1), zs["mass_z"].tolist(),
                          score.round(2).tolist(), 100, 100, None, zero, zs["pattern_z"].tolist())


def one(value, at=0, rest=0.0):
    z = np.full(CLASSES, rest)
    z[at] = value
    return z


BEFORE = evidence(0, flip_z=one(2.7), robust_z=one(18.1), mass_z=one(3.0), pattern_z=one(7.0))  # BadNets, 30.7


def test_outlier_mass_alone_is_the_poisons_still_in_data_not_the_backdoor():
    # after AdvrBD on full CIFAR-10 BadNets (ASR 1.5%): discovery named class 0 again, from its features alone
    after = evidence(0, flip_z=one(0.13), robust_z=one(0.19), mass_z=one(12.7))
    verdict = residual_verdict(BEFORE, after)
    assert not verdict["persists"] and verdict["named_after"] == 0, verdict
    assert verdict["evidence_before"] == 27.8 and verdict["evidence_after"] == 0.32
    assert verdict["discovery_after"] == 13.02 and "outlier mass" in verdict["statement"]


def test_a_model_that_still_behaves_backdoored_is_flagged():
    # after PBE (ASR 89.6%, 1,500 images per class): patch robustness and the shared pattern still single it out
    after = evidence(0, robust_z=one(8.2), mass_z=one(2.6), pattern_z=one(9.7))
    verdict = residual_verdict(BEFORE, after)
    assert verdict["persists"] and "likely persists" in verdict["statement"] and verdict["evidence_after"] == 17.9


def test_behaviour_evidence_needs_a_lead_over_the_other_classes():
    after = evidence(None, robust_z=one(11.0) + one(7.0, at=3))  # class 3 almost as strong: no single class
    verdict = residual_verdict(BEFORE, after)
    assert not verdict["persists"] and "no longer stands out" in verdict["statement"]


def test_every_method_says_what_to_do_when_the_backdoor_persists():
    from pudrt.purify.config import METHODS
    from pudrt.purify.run import PERSISTS_ADVICE

    assert set(PERSISTS_ADVICE) == set(METHODS)
    assert all("--method" in advice for advice in PERSISTS_ADVICE.values())
