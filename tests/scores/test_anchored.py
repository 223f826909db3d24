import numpy as np
import pytest

from pudrt.scores import anchored_scores, spectre_class

from .test_spectre import auroc, planted


def test_spectre_inverts_when_the_poisons_are_the_tighter_majority_and_anchors_do_not():
    # An all-to-one attack at 10% makes the target class half poisons, all carrying one trigger (a tight cluster).
    x, is_poison = planted(0.55, 16)
    clean = np.flatnonzero(~is_poison)
    assert auroc(spectre_class(x, len(x) // 2).scores, is_poison) < 0.2  # its robust fit locks onto the poisons
    anchors = np.random.default_rng(0).choice(clean, 100, replace=False)  # a few rows trusted to be clean
    fit = anchored_scores(x, anchors)
    assert fit.k == 16 and fit.cut == pytest.approx(39.25, abs=0.5)  # the χ²_16 99.9% quantile
    assert auroc(fit.scores, is_poison) >= 0.99
    flagged = np.zeros(len(x), bool)
    flagged[fit.flagged] = True
    assert is_poison[flagged].mean() >= 0.95 and flagged[is_poison].mean() >= 0.95
    assert flagged[~is_poison].mean() <= 0.05  # the clean part of the class stays trainable


def test_a_clean_class_keeps_almost_everything():
    x, _ = planted(0.0, 0, seed=3)
    fit = anchored_scores(x, np.arange(200))
    assert len(fit.flagged) <= 0.03 * len(x)


def test_few_anchors_lower_k_and_none_is_a_clear_error():
    x, _ = planted(0.3, 10)
    assert anchored_scores(x, np.arange(20)).k == 5
    with pytest.raises(ValueError, match="too few"):
        anchored_scores(x, np.arange(3))
    with pytest.raises(ValueError, match="anchor positions"):
        anchored_scores(x, np.array([0, len(x)]))
