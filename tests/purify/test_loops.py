"""The fine-tuning epoch (pudrt/purify/loops.py): how a mixed clean/adversarial loss weighs its extra rows."""

import numpy as np
import torch
import torch.nn as nn

from pudrt.attacks.pgd import PGD
from pudrt.purify.loops import finetune_epoch, make_optimizer
from pudrt.train import Materialized


def test_copies_and_negatives_keep_their_weight_in_a_mixed_epoch(train_data):
    """A copy or a negative is never attacked, so the clean/adversarial mix must not scale it.

    With ε = 0 a PGD example is its clean image, so (1 − w)·CE(x_adv) + w·CE(x) is CE(x) for every w, and an
    epoch mixed at w = 0.9 must train exactly as one at w = 0. Before the fix the copies and negatives sat inside
    the (1 − w) part: at w = 0.9 they counted at a tenth, and the two models differed.
    """
    rows = Materialized(train_data.per_class(6))
    idx = np.arange(len(rows))
    negatives = idx[rows.y[idx] == 3][:4]

    def copies(x, y, gen):  # rows under other labels, as pattern.py's copies are: a change the loss must see
        return x.flip(3), (y + 1) % 10

    def flat(model):
        return torch.cat([p.detach().ravel() for p in model.parameters()])

    weights = {}
    for w in (0.0, 0.9):
        torch.manual_seed(0)
        # no BatchNorm: the mixed epoch's extra clean forward would see other batch statistics
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
        start = flat(model)
        opt = make_optimizer(model, 0.05, 0.9, 5e-4)
        stats = finetune_epoch(model, opt, rows, idx, torch.Generator().manual_seed(1), 16, augment=False,
                               pgd=PGD(model, eps=0.0, steps=1), clean_weight=w, copies=copies,
                               negatives=negatives, negative_weight=2.0)
        assert stats["adversarial_samples"] == len(idx) and stats["pattern_copies"] == len(idx), stats
        weights[w] = flat(model)
        assert (weights[w] - start).abs().max() > 1e-2  # the epoch trained
    assert torch.allclose(weights[0.0], weights[0.9], atol=1e-6), (weights[0.0] - weights[0.9]).abs().max()
