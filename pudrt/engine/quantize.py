"""INT8 static quantization of an exported model for CPU scanning (ONNX Runtime, QDQ format).

Activations are calibrated on real images (min/max over the calibration set);
weights are quantized per channel; the classifier head stays in float.

On an x86 CPU without an 8-bit dot-product instruction (VNNI), ONNX Runtime's
u8×s8 kernels add pairs of products in 16 bits, which saturate with full-range
8-bit weights; ONNX Runtime's maintainers advise 7-bit weights (`reduce_range`)
there. Measured on an AMD EPYC with AVX2 only (the tests' resnet8, 2 epochs on
the embedded data): top-1 agreement with fp32 94.5% with 8-bit weights, 98.9%
with 7-bit, on 1,488 held-out images. So `reduce_range` defaults to True unless
the CPU that quantizes has VNNI; a file made on a VNNI machine for one without
should be made with reduce_range=True (`pudrt export --int8 --reduce-range`).

`unsigned_weights` trades speed for agreement on such a CPU: 8-bit unsigned weights
(U8U8) run on ONNX Runtime's u8×u8 kernels, which its quantization guide names as
free of that saturation, so all 8 bits count. Measured on the AVX2-only EPYC (models trained
briefly on the embedded data, 1,488 held-out images, batch 256, speed-up over torch
eager): resnet8 98.66% at 4.35x (7-bit signed) vs 99.33% at 2.58x (unsigned); torchvision
resnet18 97.65% at 6.01x vs 97.98% at 4.06x. 8-bit signed weights there: 83.9% and 93.5%.

The result keeps the float `logits` and
`features` outputs, so it is a drop-in runner for forward-only work, and its
top-1 agreement with the float model is measured and reported, never assumed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from pudrt.errors import PudrtError
from pudrt.io.atomic import atomic_path
from pudrt.system import cpu_has_vnni

log = logging.getLogger(__name__)


class _Images:
    """An onnxruntime CalibrationDataReader over an (N, 3, H, W) float32 array, in batches."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 64):
        self._feeds = iter({input_name: images[i : i + batch]} for i in range(0, len(images), batch))

    def get_next(self):
        return next(self._feeds, None)


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray,
                  method: str = "minmax", reduce_range: bool | None = None, unsigned_weights: bool = False) -> Path:
    """Write an INT8 QDQ copy of the float ONNX model `src` to `dst`, calibrated on `calibration` images.

    `reduce_range` (7-bit signed weights): None chooses True unless this CPU has VNNI; `unsigned_weights`:
    8-bit unsigned weights instead, which never saturate (module docstring)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) < 16:
        raise PudrtError(f"INT8 calibration needs real images; got {len(calibration)}, use at least a few hundred")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise PudrtError(f"unknown calibration method {method!r}; choose one of {', '.join(methods)}")
    check_weight_options(reduce_range, unsigned_weights)
    dst = Path(dst)
    log.info("INT8 with %s", weight_kind(reduce_range, unsigned_weights))
    reduce_range = not unsigned_weights and weights_reduced(reduce_range)
    with tempfile.TemporaryDirectory(prefix="pudrt-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        model = onnx.load(str(pre))
        with atomic_path(dst) as out:
            quantize_static(
                str(pre), str(out), _Images(model.graph.input[0].name, np.ascontiguousarray(calibration, np.float32)),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QUInt8 if unsigned_weights else QuantType.QInt8,
                per_channel=True, reduce_range=reduce_range, calibrate_method=methods[method],
                nodes_to_exclude=_kept_in_float(model),
            )
    return dst


def weights_reduced(reduce_range: bool | None) -> bool:
    """`reduce_range` as asked, or (None) True unless this CPU has VNNI (module docstring)."""
    return cpu_has_vnni() is not True if reduce_range is None else reduce_range


def check_weight_options(reduce_range: bool | None, unsigned_weights: bool) -> None:
    """Refuse 7-bit unsigned weights: unsigned weights are 8-bit because they do not saturate."""
    if unsigned_weights and reduce_range:
        raise PudrtError("unsigned INT8 weights are 8-bit and do not saturate; drop --reduce-range or "
                         "--unsigned-weights")


def weight_kind(reduce_range: bool | None, unsigned_weights: bool = False) -> str:
    """How `quantize_int8` stores the weights with these arguments, in words."""
    if unsigned_weights:
        return "8-bit unsigned weights"
    return f"{7 if weights_reduced(reduce_range) else 8}-bit weights"


def _kept_in_float(model) -> list[str]:
    """The classifier head (it makes the logits) stays float; everything before it is quantized.

    Measured with models trained briefly on the embedded data, batch 256, 2-core AVX-512 CPU:
    keeping the head float lifted top-1 agreement on resnet8 (97.98% -> 98.72%). Keeping the first
    convolution float too (it sees raw pixels) cost speed for no agreement: its float output fed a
    uint8 max-pool that ONNX Runtime runs in NCHW at a tenth of the speed of its NHWC one, and
    torchvision resnet18 went from 5.2x to 2.9x torch eager with 91.9% vs 91.7% agreement
    (resnet8 98.8% either way, PreActResNet-18 99.1% vs 99.3%).
    """
    heads = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")][-1:]
    return [n for n in heads if n]
