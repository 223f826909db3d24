import pytest
import torch

from pudrt.models import CIFAR10_MEAN, CIFAR10_STD, Normalized, create_model


@pytest.fixture(scope="session")
def trained_resnet8(train_data):
    """A resnet8 trained briefly on the embedded data: accurate enough that attacks and INT8 have work to do."""
    from pudrt.train import TrainConfig, train_model

    return train_model(train_data, TrainConfig(arch="resnet8", epochs=2, lr=0.1, batch_size=128, augment=False)).model


@pytest.fixture
def random_model():
    """A factory of untrained, normalised models: `random_model("resnet8")`."""

    def make(arch: str, seed: int = 0):
        torch.manual_seed(seed)
        return Normalized(create_model(arch, 10), CIFAR10_MEAN, CIFAR10_STD).eval()

    return make
