"""Poison a dataset with an attack and write it, with its ground truth, losslessly."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pudrt.attacks.base import PoisonAttack
from pudrt.attacks.wanet import WaNet
from pudrt.errors import PudrtError
from pudrt.io.atomic import write_json_atomic
from pudrt.io.datasets import POISON_FILE, LabelledImages, SkipCounter, iter_batches
from pudrt.io.writers import DatasetWriter
from pudrt.progress import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoisonResult:
    out: Path
    poison_indices: np.ndarray
    """Indices into the source dataset that carry the trigger."""
    cross_indices: np.ndarray
    """WaNet noise-mode samples (warped with noise, labels kept); empty for other attacks."""
    written: int
    skipped: int


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float NCHW in [0, 1] -> uint8 NHWC, rounding to the nearest level."""
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def poison_dataset(
    dataset: LabelledImages,
    attack: PoisonAttack,
    out: str | os.PathLike,
    fmt: str = "imagefolder",
    batch_size: int = 512,
) -> PoisonResult:
    """Write `dataset` with `attack` applied to its selected samples; `out/poison.json` records the truth."""
    try:
        poison = attack.select(dataset.labels, dataset.num_classes)
    except ValueError as err:
        raise PudrtError(str(err)) from None
    cross = attack.select_cross(dataset.labels, poison) if isinstance(attack, WaNet) else np.zeros(0, np.int64)
    is_poison = np.zeros(len(dataset), bool)
    is_poison[poison] = True
    is_cross = np.zeros(len(dataset), bool)
    is_cross[cross] = True
    gen = torch.Generator().manual_seed(attack.seed + 2)
    skips = SkipCounter(dataset)
    with DatasetWriter(out, fmt, dataset.classes, expected=len(dataset)) as writer:
        for batch in progress(iter_batches(dataset, batch_size, skips=skips), "poisoning",
                              total=-(-len(dataset) // batch_size)):
            x, y = batch.float(), batch.y.clone()
            p = torch.from_numpy(is_poison[batch.index.numpy()])
            c = torch.from_numpy(is_cross[batch.index.numpy()])
            if p.any():
                x[p] = attack.apply(x[p])
                y[p] = attack.poison_label(y[p], dataset.num_classes)
            if c.any():
                x[c] = attack.apply_noise(x[c], gen)
            writer.add(to_uint8(x), y.numpy(), batch.index.numpy())
        id_of = writer.id_of
    written = [i for i in poison if i in id_of]
    write_json_atomic(
        Path(out) / POISON_FILE,
        {
            "params": attack.params(),
            "source": str(dataset.root),
            "num_samples": len(id_of),
            "poison_ids": [id_of[i] for i in written],
            "poison_source_ids": [dataset.ids[i] for i in written],
            "cross_ids": [id_of[i] for i in cross if i in id_of],
            "skipped": [{"id": s.id, "reason": s.reason} for s in skips.skipped],
        },
    )
    return PoisonResult(Path(out), poison, cross, len(id_of), len(skips))
