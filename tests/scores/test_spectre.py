import numpy as np
import pytest

from pudrt.scores import (
    consistency_scores,
    flag_top,
    outlier_mass,
    spectral_signature_scores,
    spectre_class,
    spectre_scores,
)


def auroc(scores, is_poison):
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    p = is_poison.sum()
    return (ranks[is_poison].sum() - p * (p + 1) / 2) / (p * (len(scores) - p))


def planted(share, distance, seed=0, clean=1000, d=64, spread=0.5):
    """Anisotropic Gaussian 'clean features' plus a cluster of poisons `distance` away, `spread` times as wide."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d) * np.linspace(3, 0.1, d)[None, :]
    n_p = int(round(share / (1 - share) * clean))
    shift = rng.normal(size=d)
    shift *= distance / np.linalg.norm(shift)
    x = np.vstack([rng.normal(size=(clean, d)) @ mix.T, rng.normal(size=(n_p, d)) @ mix.T * spread + shift]) + 5
    return x, np.r_[np.zeros(clean, bool), np.ones(n_p, bool)]


@pytest.mark.parametrize("share", [0.1, 0.3, 0.45])
def test_spectre_ranks_planted_poisons_on_top(share):
    x, is_poison = planted(share, 16)
    result = spectre_class(x, int(is_poison.sum()))
    assert auroc(result.scores, is_poison) >= 0.98
    top = flag_top(result.scores, int(1.5 * is_poison.sum()))
    assert is_poison[top].sum() >= 0.95 * is_poison.sum()


def test_spectre_sees_half_poisoned_classes_where_spectral_signatures_go_blind():
    # DESIGN.md: with poisons near half of a class, the centred squared score sits between the two clusters.
    x, is_poison = planted(0.45, 10)
    assert auroc(spectral_signature_scores(x, np.zeros(len(x), int)), is_poison) < 0.8
    assert auroc(spectre_class(x, int(is_poison.sum())).scores, is_poison) >= 0.98


def test_a_clean_seed_rescues_a_cluster_the_unseeded_fit_misses():
    x, is_poison = planted(0.1, 10)
    seed = np.zeros(len(x), bool)
    seed[:300] = True  # a few samples known to be clean, as PUD's clean pool provides
    assert auroc(spectre_class(x, int(is_poison.sum()), seed=seed).scores, is_poison) >= 0.98


def test_spectral_signatures_find_a_small_far_cluster():
    x, is_poison = planted(0.1, 16)
    assert auroc(spectral_signature_scores(x, np.zeros(len(x), int)), is_poison) >= 0.98


def test_outlier_mass_separates_a_poisoned_class_from_a_clean_one():
    clean, _ = planted(0.0, 0, seed=1)
    poisoned, _ = planted(0.45, 10, seed=1)
    assert outlier_mass(clean)[0] <= 0.05
    assert outlier_mass(poisoned)[0] >= 0.3


def test_spectre_scores_runs_per_class_and_survives_tiny_classes():
    x, is_poison = planted(0.3, 16)
    labels = np.r_[np.zeros(len(x) - 3, int), [1, 1, 1]]
    out = spectre_scores(x, labels, {0: int(is_poison.sum()), 1: 1})
    assert set(out) == {0, 1}
    assert len(out[0].scores) == len(x) - 3 and len(out[1].scores) == 3


def test_consistency_scores_put_disagreements_at_the_bottom():
    a = np.array([[5.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0]])
    b = np.array([[5.0, 0, 0], [4.0, 1.0, 0], [5.0, 0, 0]])
    s = consistency_scores(a, b)
    assert s[0] == pytest.approx(1.0)
    assert 0.5 < s[1] < 1.0
    assert s[2] < 0.5  # argmaxes differ: 0.5 is taken off
    assert np.all((s >= -0.5) & (s <= 1.0))
    with pytest.raises(ValueError, match="shapes"):
        consistency_scores(a, b[:, :2])


def test_flag_top_skips_nan_and_orders_highest_first():
    s = np.array([0.1, np.nan, 3.0, 2.0])
    assert flag_top(s, 2).tolist() == [2, 3]
    assert flag_top(s, 10).tolist() == [2, 3, 0]
