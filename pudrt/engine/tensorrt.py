"""Build a serialized TensorRT engine from an exported ONNX file, through Polygraphy.

Needs `tensorrt` and `polygraphy` (pip install 'pudrt[trt]' from NVIDIA's index) and an
NVIDIA GPU; neither exists on CPU-only machines, where this raises a message saying so.
Written against Polygraphy's loader API (NetworkFromOnnxPath → CreateConfig with one
optimization profile for the dynamic batch → EngineBytesFromNetwork); not run in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

from pudrt.errors import PudrtError
from pudrt.io.atomic import atomic_path


def build_engine(onnx_path: str | os.PathLike, plan_path: str | os.PathLike, image_shape: tuple[int, int, int],
                 fp16: bool = False, batch: tuple[int, int, int] = (1, 256, 1024)) -> Path:
    """Write a TensorRT plan for `onnx_path` valid for batches batch[0]..batch[2], tuned for batch[1]."""
    try:
        from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    except ImportError as err:
        raise PudrtError(
            "building a TensorRT engine needs `tensorrt` and `polygraphy` and an NVIDIA GPU: "
            "pip install 'pudrt[trt]' --extra-index-url https://pypi.nvidia.com. Without them, run the ONNX "
            "file with ONNX Runtime (--device cpu, or --device trt for its TensorRT provider)."
        ) from err
    lo, opt, hi = batch
    profile = Profile().add("input", (lo, *image_shape), (opt, *image_shape), (hi, *image_shape))
    config = CreateConfig(fp16=fp16, profiles=[profile])
    try:
        engine_bytes = EngineBytesFromNetwork(NetworkFromOnnxPath(str(onnx_path)), config=config)()
    except Exception as err:  # noqa: BLE001 - TensorRT reports parse/build failures in many ways
        raise PudrtError(f"TensorRT could not build an engine from {onnx_path}: {err}") from err
    plan_path = Path(plan_path)
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(bytes(engine_bytes))
    return plan_path
