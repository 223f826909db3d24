"""Export a model to ONNX with named `logits` and `features` outputs, and check it.

Exporter: torch's dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`).
It traces with `torch.export`, so what is exported is exactly the program torch
runs (no TorchScript scripting), dynamic batch comes from `torch.export.Dim`,
and the same path exports the traced gradient graphs in `pudrt.engine.grad`.
The legacy TorchScript exporter is deprecated upstream and cannot take those
graphs; it is used only for TorchScript models, which torch.export cannot trace.
The exporter's optimizer folds constants (BatchNorm into Conv, shape arithmetic)
before the file is written. Convolutions over tiny feature maps (an ImageNet
architecture on 32×32 images) are then rewritten as exact dense matrix products
(`pudrt.engine.dense`), which ONNX Runtime's CPU kernels run several times faster.

Every export is verified on real images with ONNX Runtime: max |Δlogit|, max
|Δfeature|, top-1 agreement, and the tolerance used; a failed check raises.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pudrt.engine.dense import densify
from pudrt.errors import PudrtError
from pudrt.io.atomic import atomic_path
from pudrt.models import as_pair

log = logging.getLogger(__name__)

OPSET = 18
INPUT = "input"
OUTPUTS = ("logits", "features")


@dataclass(frozen=True)
class Agreement:
    """How closely an engine reproduces the source model on the same images."""

    samples: int
    max_abs_logit: float
    max_abs_feature: float
    top1: float
    atol: float
    rtol: float
    passed: bool

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        tolerance = ("top-1 only; the values are not held to a tolerance" if np.isinf(self.atol)
                     else f"tolerance |Δ| ≤ {self.atol:g} + {self.rtol:g}·|ref|")
        return (
            f"{verdict}: {self.samples} images, max |Δlogit| {self.max_abs_logit:.2e}, "
            f"max |Δfeature| {self.max_abs_feature:.2e}, top-1 agreement {100 * self.top1:.2f}% ({tolerance})"
        )


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], atol: float, rtol: float,
            min_top1: float = 1.0) -> Agreement:
    """Element-wise tolerance on logits and features, plus top-1 agreement of the logits."""
    ok = True
    diffs = {}
    for name in OUTPUTS:
        if name not in ref or name not in got:
            continue
        r, g = np.asarray(ref[name], np.float64), np.asarray(got[name], np.float64)
        d = np.abs(r - g)
        diffs[name] = float(d.max()) if d.size else 0.0
        ok &= bool(np.all(d <= atol + rtol * np.abs(r)))
    top1 = float(np.mean(ref["logits"].argmax(1) == got["logits"].argmax(1)))
    ok &= top1 >= min_top1
    return Agreement(len(ref["logits"]), diffs.get("logits", 0.0), diffs.get("features", 0.0), top1, atol, rtol,
                     ok)


def export_onnx(model: nn.Module, path: str | os.PathLike, example: torch.Tensor, opset: int = OPSET,
                dense: bool = True) -> Path:
    """Write `model` (taking [0,1] NCHW) as ONNX with outputs `logits` and `features`, dynamic batch.

    `dense=False` keeps every convolution as exported instead of rewriting those on tiny maps.
    """
    if opset < 17:
        raise PudrtError(f"opset {opset} is too old: pudrt exports opset ≥ 17")
    pair = as_pair(model, example).eval().cpu()
    example = example.detach().cpu().float()
    if len(example) < 2:  # a batch of 1 would let the exporter specialise the batch dimension
        example = torch.cat([example, example])
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            if isinstance(pair, torch.jit.ScriptModule):
                # torch.export cannot trace TorchScript; the TorchScript exporter reads it directly.
                torch.onnx.export(pair, (example,), str(tmp), dynamo=False, input_names=[INPUT],
                                  output_names=list(OUTPUTS), opset_version=opset, do_constant_folding=True,
                                  dynamic_axes={name: {0: "batch"} for name in (INPUT, *OUTPUTS)})
            else:
                program = torch.onnx.export(
                    pair, (example,), dynamo=True, input_names=[INPUT], output_names=list(OUTPUTS),
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), opset_version=opset,
                    optimize=True, external_data=False,
                )
                program.save(str(tmp))
        except Exception as err:  # noqa: BLE001 - the exporter raises many types; the user needs the gist
            raise PudrtError(
                f"ONNX export failed ({type(err).__name__}: {str(err).splitlines()[0][:300]}). The model must be "
                f"traceable by torch.export: no data-dependent Python control flow in forward()."
            ) from err
        if dense:
            densify(tmp)
    return path


def reference_outputs(model: nn.Module, images: torch.Tensor) -> dict[str, np.ndarray]:
    pair = as_pair(model, images)
    with torch.no_grad():
        logits, features = pair.eval()(images)
    return {"logits": logits.float().numpy(), "features": features.float().numpy()}


def verify_onnx(path: str | os.PathLike, model: nn.Module, images: torch.Tensor, atol: float = 1e-4,
                rtol: float = 1e-4) -> Agreement:
    """Run `path` with ONNX Runtime (CPU) and `model` with torch on `images`, and compare."""
    from pudrt.engine.runners import OrtRunner

    ref = reference_outputs(model, images)
    with OrtRunner(path, device="cpu") as runner:
        got = runner(images.numpy())
    return compare(ref, got, atol, rtol)
