import os

import numpy as np
import pytest

os.environ.setdefault("PUDRT_WORKERS", "1")
os.environ.setdefault("PUDRT_PROGRESS", "off")


@pytest.fixture(scope="session")
def train_data():
    from pudrt.io import embedded_dataset

    return embedded_dataset("train")


@pytest.fixture(scope="session")
def test_data():
    from pudrt.io import embedded_dataset

    return embedded_dataset("test")


@pytest.fixture
def images():
    """A few real CIFAR-10 test images as float NCHW in [0, 1]."""
    from pudrt.io import embedded_dataset, iter_batches

    batch = next(iter_batches(embedded_dataset("test"), 16, workers=0))
    return batch.float()


def write_npz(path, x, y, **extra):
    np.savez(path, x=x, y=y, **extra)
    return path


# Few epochs on the embedded subset, without crop augmentation: a 3×3 corner trigger is then
# learnt in a handful of epochs (random crops move it, which slows learning it down).
QUICK = dict(arch="resnet8", epochs=4, lr=0.1, batch_size=128, augment=False)


def _poisoned(tmp_path_factory, train_data, attack):
    from pudrt.attacks.poison import poison_dataset
    from pudrt.io import open_dataset

    out = tmp_path_factory.mktemp("poisoned") / attack.name
    poison_dataset(train_data, attack, out, "npz")
    return open_dataset(out)


def _train(dataset):
    from pudrt.train import TrainConfig, train_model

    return train_model(dataset, TrainConfig(**QUICK)).model


@pytest.fixture(scope="session")
def badnets_data(tmp_path_factory, train_data):
    """The embedded training data with BadNets at 10% (all-to-one, target 0), and its poison.json."""
    from pudrt.attacks import BadNets

    return _poisoned(tmp_path_factory, train_data, BadNets())


@pytest.fixture(scope="session")
def blend_data(tmp_path_factory, train_data):
    from pudrt.attacks import Blend

    return _poisoned(tmp_path_factory, train_data, Blend())


@pytest.fixture(scope="session")
def sig_data(tmp_path_factory, train_data):
    """SIG (clean-label): the sinusoid on every one of the 1,000 embedded airplanes, labels kept."""
    from pudrt.attacks import SIG

    return _poisoned(tmp_path_factory, train_data, SIG())


@pytest.fixture(scope="session")
def badnets_model(badnets_data):
    """resnet8 trained briefly on `badnets_data`: C-Acc about 55%, ASR about 95% on the embedded test split."""
    return _train(badnets_data)


@pytest.fixture(scope="session")
def blend_model(blend_data):
    return _train(blend_data)


@pytest.fixture(scope="session")
def sig_model(sig_data):
    return _train(sig_data)


@pytest.fixture(scope="session")
def clean_model(train_data):
    return _train(train_data)
