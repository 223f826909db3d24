"""Safe loading and atomic writing of datasets, models and results."""

from pudrt.io.atomic import atomic_path, write_json_atomic
from pudrt.io.datasets import (
    Batch,
    LabelledImages,
    SkipCounter,
    iter_batches,
    open_dataset,
)
from pudrt.io.embedded import embedded_dataset, resolve_data

__all__ = [
    "Batch",
    "LabelledImages",
    "SkipCounter",
    "atomic_path",
    "embedded_dataset",
    "iter_batches",
    "open_dataset",
    "resolve_data",
    "write_json_atomic",
]
