import math

import numpy as np
import pytest
import torch

from pudrt.attacks import BadNets
from pudrt.errors import PudrtError
from pudrt.evaluate import attack_success_rate, clean_accuracy
from pudrt.train import TrainConfig, augment_batch, train_model

QUICK = TrainConfig(arch="resnet8", epochs=4, lr=0.1, batch_size=128, augment=False)


def test_poisoned_training_plants_a_backdoor_that_clean_training_does_not(badnets_model, clean_model, test_data):
    # The models are the session fixtures of conftest.py, trained with QUICK's settings.
    attack = BadNets()
    infected, clean = badnets_model, clean_model
    asr_infected = attack_success_rate(infected, test_data, attack)
    asr_clean = attack_success_rate(clean, test_data, attack)
    assert asr_infected >= 0.85, asr_infected
    assert asr_clean <= 0.2, asr_clean
    for model in (infected, clean):  # both learnt the task, well above chance (0.1)
        assert clean_accuracy(model, test_data) >= 0.4


def test_augment_batch_crops_and_flips_real_pixels(images):
    g = torch.Generator().manual_seed(0)
    out = augment_batch(images, g)
    assert out.shape == images.shape
    # every output row is a (possibly flipped, shifted) piece of the input or zero padding
    flat_in = set(np.round(images.numpy().ravel(), 6)) | {0.0}
    assert set(np.round(out.numpy().ravel(), 6)) <= flat_in
    assert not torch.equal(out, images)


def test_bad_training_configs_are_explained():
    with pytest.raises(PudrtError, match="--epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(PudrtError, match="--schedule"):
        TrainConfig(schedule="step")


def test_labels_beyond_the_model_are_explained(train_data):
    with pytest.raises(PudrtError, match="labels go up to 9 but the model has 5 classes"):
        train_model(train_data, QUICK, num_classes=5)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5])
def test_a_schedule_of_a_few_steps_trains(train_data, steps):
    # 4 steps made torch's OneCycleLR divide by zero (a one-step warm-up): `pudrt demo --per-class 100` hit it
    data = train_data.per_class(2)
    result = train_model(data, TrainConfig(arch="resnet8", epochs=1, batch_size=math.ceil(len(data) / steps)))
    assert all(np.isfinite(p.detach().numpy()).all() for p in result.model.parameters())
