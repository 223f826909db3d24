"""Runners: one interface over torch, ONNX Runtime and TensorRT.

`runner(x) -> {"logits": ..., "features": ...}` (plus `"grad"` or `"x_adv"` for
the gradient graphs), on float32 NCHW images in [0, 1], as NumPy arrays. Every
runner is a context manager and says which engine actually ran it
(`runner.provider`), because asking is not getting: ONNX Runtime lists CUDA
and TensorRT as *available* whenever the GPU package is installed, GPU or not,
and quietly runs on the CPU when they fail to load. pudrt reads the providers
the session really holds and, when a GPU was asked for and not obtained,
refuses (or, with `allow_fallback=True`, warns and records why).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pudrt.errors import PudrtError
from pudrt.system import available_cores

log = logging.getLogger(__name__)

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
DEVICES = ("auto", "cpu", "cuda", "trt")


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


class TorchRunner:
    """Eager PyTorch: the reference every engine is compared against."""

    def __init__(self, model: nn.Module, device: str | torch.device | None = None):
        from pudrt.models import as_pair

        self.model = as_pair(model).eval()
        self.device = torch.device(device) if device is not None else next(self.model.parameters()).device
        self.model.to(self.device)
        self.provider = f"torch-{self.device.type}"
        self.outputs = ("logits", "features")

    def __enter__(self) -> TorchRunner:
        return self

    def __exit__(self, *exc) -> None:
        pass

    @torch.no_grad()
    def __call__(self, x) -> dict[str, np.ndarray]:
        x = torch.as_tensor(x, dtype=torch.float32).to(self.device)
        logits, features = self.model(x)
        return {"logits": logits.float().cpu().numpy(), "features": features.float().cpu().numpy()}


def _ort():
    try:
        import onnxruntime
    except ImportError as err:  # pragma: no cover - a core dependency
        raise PudrtError("onnxruntime is not installed: pip install onnxruntime (or pudrt[gpu])") from err
    return onnxruntime


def choose_providers(device: str, available: list[str]) -> list[str]:
    """The provider list to ask ONNX Runtime for: TensorRT → CUDA → CPU, as far as `device` allows."""
    if device not in DEVICES:
        raise PudrtError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    order = {"auto": [TRT, CUDA, CPU], "trt": [TRT, CUDA, CPU], "cuda": [CUDA, CPU], "cpu": [CPU]}[device]
    chosen = [p for p in order if p in available or p == CPU]
    return chosen


class OrtRunner:
    """ONNX Runtime session with explicit threads, IO binding, and an honest provider report.

    `device`: "cpu", "cuda", "trt" (TensorRT execution provider, falling back to CUDA
    for unsupported nodes) or "auto" (the best the machine really has, silently).
    When "cuda" or "trt" is asked and the session does not hold that provider, the
    runner raises, unless `allow_fallback=True`, when it warns and keeps the reason
    in `fallback_reason`.
    """

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None,
                 allow_fallback: bool = False, fp16: bool = False):
        ort = _ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise PudrtError(f"ONNX file {self.path} does not exist")
        available = ort.get_available_providers()
        providers = choose_providers(device, available)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Worker threads spin while a run is on (fast) but not after it: by default they keep spinning,
        # and on 2 cores that took a quarter of the speed of whatever ran next (torch, another session).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        provider_options = [
            {"trt_fp16_enable": str(fp16), "trt_engine_cache_enable": "True",
             "trt_engine_cache_path": str(self.path.parent / ".trt-cache")} if p == TRT else {}
            for p in providers
        ]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers,
                                                provider_options=provider_options)
        except Exception as err:  # noqa: BLE001 - ORT raises its own pybind types
            raise PudrtError(f"{self.path} is not a loadable ONNX model ({str(err).splitlines()[0][:300]})") from None
        held = self.session.get_providers()
        self.provider = held[0]
        self.fallback_reason = None
        wanted = {"cuda": CUDA, "trt": TRT}.get(device)
        if wanted is not None and wanted not in held:
            why = (
                f"{wanted} is not in this onnxruntime build (it offers {', '.join(available)}); "
                f"install pudrt[gpu] (onnxruntime-gpu)"
                if wanted not in available
                else f"{wanted} is listed by onnxruntime but failed to load in the session (no usable GPU, "
                     f"or missing CUDA/cuDNN/TensorRT libraries); the session holds {', '.join(held)}"
            )
            if not allow_fallback:
                self.session = None  # not left to the collector in the traceback's cycle (io/datasets.py)
                raise PudrtError(f"asked for {device} but cannot run there: {why}. Pass --device cpu, or allow "
                                 f"the fallback explicitly.")
            self.fallback_reason = why
            log.warning("running on %s instead of %s: %s", self.provider, wanted, why)
        try:
            self._check_io()
        except PudrtError:
            self.session = None
            raise
        self._binding = self.session.io_binding()

    def _check_io(self) -> None:
        inputs = self.session.get_inputs()
        image = inputs[0]
        shape = image.shape
        if len(shape) != 4 or shape[1] not in (3, "3") or image.type != "tensor(float)":
            raise PudrtError(
                f"{self.path}: input {image.name!r} is {image.type} of shape {shape}; pudrt feeds float32 "
                f"images of shape (N, 3, H, W) in [0, 1]. Export the model with `pudrt export`, or wrap it so "
                f"its input is RGB NCHW (normalisation inside the graph)."
            )
        self.input_name = image.name
        self.extra_inputs = [i.name for i in inputs[1:]]
        self.outputs = tuple(o.name for o in self.session.get_outputs())
        if "logits" not in self.outputs and "grad" not in self.outputs and "x_adv" not in self.outputs:
            raise PudrtError(
                f"{self.path}: outputs are {list(self.outputs)}; pudrt needs one named 'logits' (and 'features' "
                f"for scans). Re-export with `pudrt export`."
            )
        self.has_features = "features" in self.outputs
        fixed = shape[0]
        self.fixed_batch = fixed if isinstance(fixed, int) else None

    def require_features(self) -> None:
        if not self.has_features:
            raise PudrtError(
                f"{self.path} has no 'features' output (penultimate activations), which spectral signatures, "
                f"SPECTRE and the consistency scores read. Re-export with `pudrt export MODEL -o FILE.onnx`."
            )

    def __enter__(self) -> OrtRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._binding = None
        self.session = None

    def __call__(self, x, **extra) -> dict[str, np.ndarray]:
        if self.session is None:
            raise PudrtError("this runner was closed")
        x = _as_numpy(x)
        if self.fixed_batch is not None and len(x) != self.fixed_batch:
            raise PudrtError(f"{self.path} has a fixed batch of {self.fixed_batch}; got {len(x)} images. "
                             f"Re-export with a dynamic batch (`pudrt export`).")
        missing = set(self.extra_inputs) - set(extra)
        if missing:
            raise PudrtError(f"{self.path} also needs input(s) {sorted(missing)}")
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        b.bind_cpu_input(self.input_name, x)
        for name, value in extra.items():
            b.bind_cpu_input(name, np.ascontiguousarray(_extra_array(value)))
        for name in self.outputs:
            b.bind_output(name, "cpu")
        self.session.run_with_iobinding(b)
        return dict(zip(self.outputs, b.copy_outputs_to_cpu(), strict=True))


def _extra_array(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class TrtRunner:
    """Native TensorRT through Polygraphy: builds an engine from ONNX (or loads a serialized `.plan`).

    Imported lazily; without `tensorrt`/`polygraphy` (pip install 'pudrt[trt]', from
    NVIDIA's index) it raises a message that says so. Not exercised on CPU-only machines.
    """

    def __init__(self, path: str | os.PathLike, fp16: bool = False):
        try:
            from polygraphy.backend.common import BytesFromPath
            from polygraphy.backend.trt import CreateConfig, EngineFromBytes, EngineFromNetwork, NetworkFromOnnxPath
            from polygraphy.backend.trt import TrtRunner as _PolyRunner
        except ImportError as err:
            raise PudrtError(
                "native TensorRT needs the `tensorrt` and `polygraphy` packages and an NVIDIA GPU: "
                "pip install 'pudrt[trt]' --extra-index-url https://pypi.nvidia.com. On this machine use "
                "--device trt with ONNX Runtime's TensorRT provider, or --device cpu."
            ) from err
        self.path = Path(path)
        if self.path.suffix in (".plan", ".engine"):
            engine = EngineFromBytes(BytesFromPath(str(self.path)))
        else:
            engine = EngineFromNetwork(NetworkFromOnnxPath(str(self.path)), config=CreateConfig(fp16=fp16))
        self._runner = _PolyRunner(engine)
        self.provider = "tensorrt"

    def __enter__(self) -> TrtRunner:
        self._runner.activate()
        return self

    def __exit__(self, *exc) -> None:
        self._runner.deactivate()

    def __call__(self, x, **extra) -> dict[str, np.ndarray]:
        feed = {"input": _as_numpy(x), **{k: _extra_array(v) for k, v in extra.items()}}
        out = self._runner.infer(feed)
        return {k: np.asarray(v) for k, v in out.items()}


def open_runner(path: str | os.PathLike, device: str = "auto", **kwargs):
    """A runner for an engine file: `.onnx` through ONNX Runtime, `.plan`/`.engine` through TensorRT."""
    path = Path(path)
    if path.suffix in (".plan", ".engine"):
        return TrtRunner(path, fp16=kwargs.get("fp16", False))
    return OrtRunner(path, device=device, **kwargs)
