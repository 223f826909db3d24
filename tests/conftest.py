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
