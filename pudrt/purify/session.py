"""Bookkeeping every purification method shares: per-step metrics, pool quality, checkpoints, resume."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pudrt.attacks.base import PoisonAttack
from pudrt.errors import PudrtError
from pudrt.evaluate import accuracy, adversarial_accuracy, backdoor_rates, predict
from pudrt.io.atomic import atomic_path
from pudrt.io.datasets import DecodedImages, LabelledImages
from pudrt.purify.config import PurifyConfig
from pudrt.train import Materialized

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


@dataclass
class Evaluation:
    """Test data for per-step metrics; `attack` adds ASR, `adv_limit` bounds the PGD evaluation's samples."""

    test: LabelledImages
    attack: PoisonAttack | None = None
    adv_limit: int | None = 1000
    eps: float = 6 / 255
    steps: int = 7

    def __post_init__(self) -> None:
        if not self.test.decoded:  # read at every step: decode it once
            self.test = DecodedImages(self.test, desc="decoding the test data")

    def __call__(self, model: nn.Module) -> dict:
        modes = [(m, m.training) for m in model.modules()]
        model.eval()  # train-mode BatchNorm would read batch statistics and overwrite the running ones
        try:
            pred, labels = predict(model, self.test)
            row = {"c_acc": accuracy(pred, labels)}
            if self.attack is not None:
                row.update(backdoor_rates(model, self.test, self.attack, clean=(pred, labels)))
                if not self.attack.all_to_all:
                    # a model that never predicts the target has ASR 0 and looks purified (SIG: README)
                    own = labels == self.attack.target
                    row["target_class_acc"] = float((pred[own] == labels[own]).float().mean()) if bool(
                        own.any()) else float("nan")
                    # poisons labelled with the target teach a model to answer it more often, which lifts its
                    # target-class accuracy: this share (the truth is own.mean()) shows how much
                    row["target_share"] = float((pred == self.attack.target).float().mean()) if len(labels) else \
                        float("nan")
            name = f"adv_acc@PGD-{self.steps}/{round(self.eps * 255)}"
            row[name] = adversarial_accuracy(model, self.test, self.eps, self.steps, limit=self.adv_limit)
        finally:
            for m, mode in modes:
                m.training = mode
        return row


def checkpoint_files(out: str | os.PathLike) -> list[Path]:
    """A run folder's step checkpoints, oldest step first."""
    return sorted((Path(out) / CHECKPOINTS).glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))


def worked_seconds(history: list[dict]) -> float:
    """The working time a run's history records up to its last step (over all its starts; 0 before any step)."""
    return next((r["seconds"] for r in reversed(history) if "seconds" in r), 0.0)


RESUME_INDIFFERENT = ("residual_check",)
"""Settings a run may change between a checkpoint and its resumption."""


class Session:
    """One run's data, output folder and history; writes a checkpoint after each step."""

    def __init__(self, data: Materialized, cfg: PurifyConfig, out: Path, evaluation: Evaluation | None,
                 truth_rows: np.ndarray | None):
        self.data, self.cfg, self.out, self.evaluation = data, cfg, Path(out), evaluation
        self.truth = None
        if truth_rows is not None:
            self.truth = np.zeros(len(data), bool)
            self.truth[truth_rows] = True
        self.history: list[dict] = []
        self.saved = 0
        """Checkpoints written by this session (0: it only reloaded a run that had already ended)."""
        self.started = time.perf_counter()
        self.resumed = False
        (self.out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)

    # -- metrics ------------------------------------------------------------------------
    def pool_quality(self, clean: np.ndarray, poison: np.ndarray) -> dict:
        """Precision and recall of both pools against the ground-truth poisons, when DATA carries them."""
        if self.truth is None:
            return {}
        is_p = self.truth
        n_p, n_c = int(is_p.sum()), int((~is_p).sum())
        out = {}
        if len(clean):
            tp = int((~is_p[clean]).sum())
            out["clean_pool"] = {"precision": tp / len(clean), "recall": tp / max(n_c, 1),
                                 "poisons_inside": int(is_p[clean].sum())}
        if len(poison):
            tp = int(is_p[poison].sum())
            out["poison_pool"] = {"precision": tp / len(poison), "recall": tp / max(n_p, 1)}
        return out

    def record(self, row: dict, model: nn.Module | None = None) -> dict:
        if model is not None and self.evaluation is not None:
            row["eval"] = self.evaluation(model)
        row["seconds"] = round(time.perf_counter() - self.started, 1)
        self.history.append(row)
        log.info("%s", json.dumps(row))
        return row

    # -- checkpoints -----------------------------------------------------------------------
    def _config_json(self) -> str:
        # the residual check reads the finished model and changes no step, so a run may resume with it on or off
        settings = {k: v for k, v in self.cfg.to_dict().items() if k not in RESUME_INDIFFERENT}
        return json.dumps(settings, sort_keys=True)

    def _matches(self, stored: str | None) -> bool:
        """Are a checkpoint's settings this run's? A setting pudrt gained after the checkpoint was written matches
        when this run leaves it at its default (a run started before an upgrade resumes with the same options)."""
        if stored is None:
            return False
        theirs, ours = json.loads(stored), json.loads(self._config_json())
        defaults = json.loads(json.dumps({f.name: f.default for f in fields(self.cfg) if f.default is not MISSING}))
        theirs.update({k: v for k, v in ours.items() if k not in theirs and k in defaults and v == defaults[k]})
        return theirs == ours

    def save(self, step: int, state: dict[str, torch.Tensor | np.ndarray | str | None]) -> None:
        """Checkpoint after `step`: tensors and strings only, so it loads with weights_only=True."""
        blob = {"step": step, "config": self._config_json(), "history": json.dumps(self.history)}
        for k, v in state.items():
            if isinstance(v, np.ndarray):
                v = torch.from_numpy(np.ascontiguousarray(v))
            elif isinstance(v, nn.Module):
                v = {n: t.detach().clone() for n, t in v.state_dict().items()}
            blob[k] = v
        with atomic_path(self.out / CHECKPOINTS / f"step-{step}.pt") as tmp:
            torch.save(blob, tmp)
        self.saved += 1

    def latest(self) -> dict | None:
        """The newest checkpoint of this configuration, or None; another configuration's is an error."""
        files = checkpoint_files(self.out)
        if not files:
            return None
        try:
            blob = torch.load(files[-1], weights_only=True)
        except Exception as err:  # noqa: BLE001 - a damaged checkpoint: say which and how to recover
            raise PudrtError(f"{files[-1]}: cannot read this checkpoint ({err}); delete it to resume from the "
                             f"one before, or use a new output folder") from err
        if not self._matches(blob.get("config")):
            raise PudrtError(f"{self.out} holds checkpoints of a run with different settings; resume with the "
                             f"same options, or pass --restart (or a new -o) to start over")
        self.history = json.loads(blob["history"])
        if not self.resumed:
            # the clock goes on from the checkpoint: "seconds" counts the work the run kept, over all its starts
            # (the work after the checkpoint, lost when the run was killed, is not counted)
            self.started = time.perf_counter() - worked_seconds(self.history)
            self.resumed = True
        log.info("resuming after step %d from %s", blob["step"], files[-1])
        return blob

    def clear(self) -> None:
        for f in checkpoint_files(self.out):
            f.unlink()
