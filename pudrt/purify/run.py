"""`purify(model, dataset, cfg, out)`: the whole job, whichever method; writes everything into `out`."""

from __future__ import annotations

import copy
import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pudrt.errors import PudrtError
from pudrt.io.atomic import atomic_path, write_json_atomic
from pudrt.io.datasets import LabelledImages
from pudrt.models import as_pair
from pudrt.purify.advrbd import advrbd
from pudrt.purify.config import PurifyConfig
from pudrt.purify.discovery import TargetEvidence, discover_target, residual_verdict
from pudrt.purify.loops import clone_trainable, pixels
from pudrt.purify.progressive import Pools, last_step, progressive_purify
from pudrt.purify.session import Evaluation, Session
from pudrt.train import Materialized, set_threads

log = logging.getLogger(__name__)


@dataclass
class PurifyResult:
    model: nn.Module
    clean_indices: np.ndarray
    """Dataset indices (not rows) of the final clean pool."""
    poison_indices: np.ndarray
    target: TargetEvidence
    history: list[dict]
    before: dict | None
    finished: bool
    seconds: float
    check_images: torch.Tensor | None = None
    """A few real images of DATA, on which the ONNX export of the result is checked."""
    residual: dict | None = None
    """Target discovery on the purified model against the input model's found target (discovery.residual_verdict);
    None when no target was found, the run stopped early or `cfg.residual_check` is off."""


# What a user can do when the residual check finds the backdoor still there, per method.
PERSISTS_ADVICE = {
    "pbe": "PBE (the paper's method) neither filters the target class nor unlearns, so a trigger that adversarial "
           "fine-tuning leaves intact stays (on full CIFAR-10: BadNets and SIG); PUD, the default --method, adds "
           "both and removed all four benchmark attacks (README, Status)",
    "pud": "a longer schedule (--epochs-scale 0.3 or 1) or --method advrbd may remove it; measure the ASR with "
           "--eval-data TEST --trigger ATTACK",
    "advrbd": "try PUD, the default --method, which filters the target class at every step and unlearns what it "
              "flags; measure the ASR with --eval-data TEST --trigger ATTACK",
}


def check_inputs(model: nn.Module, dataset: LabelledImages, num_classes: int) -> None:
    if len(dataset) == 0:
        raise PudrtError(f"{dataset.root}: the dataset is empty; purify needs the (untrusted) training data")
    if len(np.unique(dataset.labels)) < 2:
        raise PudrtError(f"{dataset.root}: every sample has the same label; purify needs a labelled dataset "
                         f"(ImageFolder class folders, or .npz with `y`)")
    dataset.check_num_classes(num_classes)


def purify(model: nn.Module, dataset: LabelledImages, cfg: PurifyConfig, out: str | Path, num_classes: int,
           evaluation: Evaluation | None = None, stop_after: int | None = None, restart: bool = False
           ) -> PurifyResult:
    """Purify `model` (a trainable module taking [0, 1] pixels) with `dataset`, writing `out/`."""
    start = time.perf_counter()
    out = Path(out)
    check_inputs(model, dataset, num_classes)
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = Materialized(dataset)
    if len(np.unique(data.y)) < 2:
        raise PudrtError(f"{dataset.root}: fewer than two classes among the readable samples")
    truth_rows = None
    if dataset.poison_indices is not None:
        truth_rows = np.flatnonzero(np.isin(data.index, dataset.poison_indices))
    session = Session(data, cfg, out, evaluation, truth_rows)
    if restart:
        session.clear()
    infected = copy.deepcopy(model).eval()  # the caller's model is left as it was
    for p in infected.parameters():
        p.requires_grad_(False)

    def discover(net: nn.Module) -> TargetEvidence:  # the same samples each time (same seed)
        return discover_target(net, as_pair(net), data, num_classes, samples=cfg.discovery_samples,
                               kl_eps=cfg.kl_eps, kl_radius=cfg.kl_radius, seed=cfg.seed)

    found = out / "target.json"
    if found.exists() and session.latest() is not None:
        target = TargetEvidence(**json.loads(found.read_text()))
    else:
        target = discover(infected)
        write_json_atomic(found, target.to_dict())
    before = next((r["eval"] for r in session.history if r.get("step") == 0 and "eval" in r), None)
    if evaluation is not None and not session.history:
        before = evaluation(infected)
        session.history.append({"step": 0, "eval": before, "note": "infected model, before purification"})

    if cfg.method in ("pud", "pbe"):
        student, pools = progressive_purify(clone_trainable(infected), infected, session, target, stop_after)
        finished = len(session.history) and session.history[-1].get("step") == last_step(cfg)
    else:
        student, pools = advrbd(infected, session, num_classes, target.target_class)
        finished = True  # AdvrBD has no --stop-after; its four stages always run to the end
    student.eval()
    residual = None
    checked = out / "residual.json"
    if finished and cfg.residual_check and target.target_class is not None:
        if session.saved == 0 and checked.exists():  # a run that had already ended: its model is unchanged
            after = TargetEvidence(**json.loads(checked.read_text()))
        else:
            after = discover(student)
            write_json_atomic(checked, after.to_dict())
        residual = residual_verdict(target, after)
        if residual["persists"]:
            residual["statement"] += f"; {PERSISTS_ADVICE[cfg.method]}"
        (log.warning if residual["persists"] else log.info)("residual check: %s", residual["statement"])
    else:
        checked.unlink(missing_ok=True)  # never left from an earlier run beside this run's model
    result = PurifyResult(student, data.index[pools.clean], data.index[pools.poison], target, session.history,
                          before, bool(finished), time.perf_counter() - start,
                          pixels(data, np.arange(min(32, len(data))))[0], residual)
    write_pools(out, dataset, data, pools)
    write_json_atomic(out / "history.json", {"method": cfg.method, "config": cfg.to_dict(),
                                             "target": target.to_dict(), "steps": session.history,
                                             "residual": residual, "finished": result.finished})
    return result


def write_pools(out: Path, dataset: LabelledImages, data: Materialized, pools: Pools) -> None:
    """clean_indices.npy / poison_indices.npy (dataset indices) and scores.csv (one row per readable sample)."""
    for name, rows in (("clean_indices", pools.clean), ("poison_indices", pools.poison)):
        with atomic_path(out / f"{name}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, data.index[rows].astype(np.int64))
    pool = np.full(len(data), "", dtype=object)
    pool[pools.clean] = "clean"
    pool[pools.poison] = "poison"
    with atomic_path(out / "scores.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "id", "label", "score", "target_score", "pool"])
            for r in range(len(data)):
                i = int(data.index[r])
                sp = "" if np.isnan(pools.spectre[r]) else f"{pools.spectre[r]:.6g}"
                sc = "" if np.isnan(pools.scores[r]) else f"{pools.scores[r]:.6g}"
                w.writerow([i, dataset.ids[i], int(data.y[r]), sc, sp, pool[r]])
