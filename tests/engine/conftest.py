import pytest
import torch

from pudrt.models import CIFAR10_MEAN, CIFAR10_STD, Normalized, create_model


@pytest.fixture(scope="session")
def trained_resnet8(clean_model):
    """A resnet8 trained briefly on the embedded data (the suite's clean model): accurate enough that attacks and
    INT8 have work to do."""
    return clean_model


@pytest.fixture
def random_model():
    """A factory of untrained, normalised models: `random_model("resnet8")`."""

    def make(arch: str, seed: int = 0):
        torch.manual_seed(seed)
        return Normalized(create_model(arch, 10), CIFAR10_MEAN, CIFAR10_STD).eval()

    return make
