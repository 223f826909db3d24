"""CUDA kernels for the scoring hot paths, loaded with CuPy from `kernels/*.cu`.

Each kernel has a NumPy twin in `pudrt.scores` that the CPU path uses and that the
tests compare it with. The functions here take and return CuPy arrays; `xp_*`
dispatch on the array type, so callers write one line for both. CuPy is imported
lazily: without it (or without a GPU) the NumPy twins run.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np

from pudrt.errors import PudrtError
from pudrt.scores import ClassMoments, kl_rows, projection_scores

KERNEL_FILES = ("kl_rows.cu", "spectral_scores.cu", "class_moments.cu")


def kernel_dir() -> Path:
    """Where the .cu sources are: inside the installed package (`pudrt/kernels`), or the checkout's `kernels/`."""
    try:
        packaged = resources.files("pudrt.kernels")
        if packaged.joinpath("kl_rows.cu").is_file():
            return Path(str(packaged))
    except ModuleNotFoundError:
        pass
    here = Path(__file__).resolve().parents[2] / "kernels"
    if (here / "kl_rows.cu").is_file():
        return here
    raise PudrtError("the CUDA kernel sources (kernels/*.cu) are missing from this install; reinstall pudrt")


def kernel_source(name: str) -> str:
    return (kernel_dir() / name).read_text()


def cupy_or_none():
    try:
        import cupy
    except ImportError:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # noqa: BLE001 - CUDA driver missing, no device, ...
        return None
    return cupy


def require_cupy():
    cp = cupy_or_none()
    if cp is None:
        raise PudrtError("the GPU kernels need CuPy and a CUDA GPU: pip install 'pudrt[gpu]' on a GPU machine")
    return cp


@functools.cache
def _module(name: str):
    cp = require_cupy()
    return cp.RawModule(code=kernel_source(name), options=("--std=c++14",))


def kl_rows_gpu(a, b):
    cp = require_cupy()
    a = cp.ascontiguousarray(a, dtype=cp.float32)
    b = cp.ascontiguousarray(b, dtype=cp.float32)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"kl_rows needs two (n, k) arrays of one shape, got {a.shape} and {b.shape}")
    n, k = a.shape
    out = cp.empty(n, dtype=cp.float32)
    if n:
        _module("kl_rows.cu").get_function("kl_rows")((n,), (256,), (a, b, out, np.int32(n), np.int32(k)))
    return out


def projection_scores_gpu(features, labels, means, vectors):
    cp = require_cupy()
    f = cp.ascontiguousarray(features, dtype=cp.float32)
    y = cp.ascontiguousarray(labels, dtype=cp.int64)
    mu = cp.ascontiguousarray(means, dtype=cp.float32)
    v = cp.ascontiguousarray(vectors, dtype=cp.float32)
    n, d = f.shape
    out = cp.empty(n, dtype=cp.float32)
    if n:
        fn = _module("spectral_scores.cu").get_function("projection_scores")
        fn((n,), (128,), (f, y, mu, v, out, np.int32(n), np.int32(d), np.int32(len(mu))))
    return out


def class_moments_add_gpu(moments: dict, features, labels) -> dict:
    """Fold a batch into GPU-resident `{"counts", "sums", "outer"}` float64 arrays (see ClassMoments)."""
    cp = require_cupy()
    f = cp.ascontiguousarray(features, dtype=cp.float32)
    y = cp.ascontiguousarray(labels, dtype=cp.int64)
    n, d = f.shape
    classes = moments["counts"].shape[0]
    if n:
        mod = _module("class_moments.cu")
        mod.get_function("class_sums")(((d + 255) // 256,), (256,),
                                       (f, y, moments["counts"], moments["sums"], np.int32(n), np.int32(d),
                                        np.int32(classes)))
        cells = d * d
        mod.get_function("class_outer_sums")(((cells + 255) // 256,), (256,),
                                             (f, y, moments["outer"], np.int32(n), np.int32(d), np.int32(classes)))
    return moments


def xp_kl_rows(a, b):
    """KL rows on whichever device the arrays live: CuPy kernel or NumPy twin."""
    if type(a).__module__.startswith("cupy"):
        return kl_rows_gpu(a, b)
    return kl_rows(a, b)


def xp_projection_scores(features, labels, means, vectors):
    if type(features).__module__.startswith("cupy"):
        return projection_scores_gpu(features, labels, means, vectors)
    return projection_scores(features, labels, means, vectors)


__all__ = ["ClassMoments", "class_moments_add_gpu", "cupy_or_none", "kernel_dir", "kernel_source", "kl_rows_gpu",
           "projection_scores_gpu", "xp_kl_rows", "xp_projection_scores"]
