"""Train a classifier on a (possibly poisoned) dataset, fast on a CPU.

SGD with Nesterov momentum, a one-cycle or cosine schedule, random crop (pad 4)
and horizontal flip done on whole batches, channels-last memory, and bf16
autocast where the CPU has native bf16 (AVX512-BF16 / AMX) or on a GPU. The
dataset is decoded once into a uint8 memory-mapped file, so epochs read pixels
from the page cache instead of decoding images again, and memory stays bounded
by the OS, not by the dataset.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pudrt.errors import PudrtError
from pudrt.io.datasets import DecodedImages, LabelledImages
from pudrt.models import CIFAR10_MEAN, CIFAR10_STD, Normalized, create_model
from pudrt.progress import progress
from pudrt.system import available_cores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "resnet9w16"
    epochs: int = 15
    batch_size: int = 256
    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    augment: bool = True
    bf16: bool | None = None
    """None: use bf16 autocast where the hardware runs it natively."""
    seed: int = 0
    threads: int | None = None
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD

    def __post_init__(self):
        if self.epochs < 1:
            raise PudrtError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise PudrtError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise PudrtError(f"--lr must be positive, got {self.lr}")
        if self.schedule not in ("onecycle", "cosine"):
            raise PudrtError(f"--schedule must be onecycle or cosine, got {self.schedule!r}")
        if not 0 <= self.label_smoothing < 1:
            raise PudrtError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict]
    seconds: float
    skipped: int


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def set_threads(threads: int | None) -> int:
    """Intra-op threads: the given number, or one per available core."""
    if threads is None:
        threads = available_cores()
    torch.set_num_threads(threads)
    return threads


class Materialized:
    """A dataset decoded once (`DecodedImages`), read by row: `x` (uint8 NCHW memory map), `y`, `index`.

    Row i holds dataset sample `index[i]`: unreadable samples are skipped, so rows
    and dataset indices differ once one is.
    """

    def __init__(self, dataset: LabelledImages, batch_size: int = 512):
        self.decoded = DecodedImages(dataset, batch_size)  # holds the memory map's folder
        if len(self.decoded) == 0:
            raise PudrtError(f"{dataset.root}: no readable samples to train on")
        self.x, self.y, self.index = self.decoded.x, self.decoded.labels, self.decoded.index
        self.skipped = self.decoded.skipped

    def __len__(self) -> int:
        return len(self.y)


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero-padding by `pad`, and a random horizontal flip, for a whole NCHW batch."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chan, rows, cols]


def train_model(
    dataset: LabelledImages,
    cfg: TrainConfig,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    on_epoch=None,
) -> TrainResult:
    """Train `cfg.arch` on `dataset`; returns the model wrapped to take [0, 1] pixels."""
    start = time.perf_counter()
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    num_classes = num_classes or dataset.num_classes
    dataset.check_num_classes(num_classes)
    device = torch.device(device)
    data = Materialized(dataset)
    model = Normalized(create_model(cfg.arch, num_classes), cfg.mean, cfg.std).to(device)
    bf16 = cfg.bf16 if cfg.bf16 is not None else (device.type == "cuda" or cpu_has_native_bf16())
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
    )
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        # a warm-up of exactly one step (4 steps in all) makes OneCycleLR divide by zero: give it two
        warmup = 0.25 if total != 4 else 0.5
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=warmup,
                                                    anneal_strategy="linear", div_factor=25, final_div_factor=1e3)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    log.info("training %s on %d samples for %d epochs (bf16=%s, %d threads)", cfg.arch, len(data), cfg.epochs,
             bf16, torch.get_num_threads())
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(data), generator=gen).numpy()
        loss_sum, correct, seen = 0.0, 0, 0
        for step in progress(range(steps_per_epoch), f"epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch):
            idx = np.sort(order[step * cfg.batch_size : (step + 1) * cfg.batch_size])
            x = torch.from_numpy(data.x[idx]).float().div_(255.0)
            y = torch.from_numpy(data.y[idx])
            if cfg.augment:
                x = augment_batch(x, gen)
            x = x.to(device, memory_format=torch.channels_last)
            y = y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        row = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen,
               "seconds": time.perf_counter() - start}
        history.append(row)
        log.info("epoch %d: loss %.4f, train acc %.4f", row["epoch"], row["loss"], row["train_acc"])
        if on_epoch is not None:
            on_epoch(row)
    model.eval()
    model = model.to(memory_format=torch.contiguous_format)
    return TrainResult(model, history, time.perf_counter() - start, data.skipped)

