import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pudrt.engine.kernels import KERNEL_FILES, cupy_or_none, kernel_dir
from pudrt.scores import ClassMoments, kl_rows, projection_scores

gpu = pytest.mark.skipif(cupy_or_none() is None, reason="needs CuPy and a CUDA GPU; the NumPy twins run here")


def _kl_reference(a, b):
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return F.kl_div(F.log_softmax(b, 1), F.log_softmax(a, 1), reduction="none", log_target=True).sum(1).numpy()


@pytest.mark.parametrize("k", [1, 10, 1000])
def test_kl_rows_matches_a_float64_reference(k):
    rng = np.random.default_rng(k)
    a = rng.normal(0, 3, (64, k)).astype(np.float32)
    b = rng.normal(0, 3, (64, k)).astype(np.float32)
    np.testing.assert_allclose(kl_rows(a, b), _kl_reference(a, b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(kl_rows(a, a), 0, atol=1e-5)
    if k == 1:
        assert np.all(kl_rows(a, b) == 0)


def test_kl_rows_is_stable_for_extreme_logits():
    a = np.array([[1e4, 0, -1e4], [-3e4, 3e4, 0], [88.0, 89.0, 90.0]], np.float32)
    b = np.array([[0, 1e4, -1e4], [-3e4, 3e4, 0], [-88.0, 0.0, 88.0]], np.float32)
    out = kl_rows(a, b)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, _kl_reference(a, b), rtol=1e-4)
    assert out[0] == pytest.approx(1e4, rel=1e-4) and out[1] == 0


def test_projection_scores_match_a_direct_computation_and_skip_unknown_classes():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(50, 16)).astype(np.float32)
    y = rng.integers(0, 3, 50)
    y[:3] = [5, -1, 4]  # labels with no statistics
    means = rng.normal(size=(4, 16)).astype(np.float32)
    vecs = rng.normal(size=(4, 16)).astype(np.float32)
    out = projection_scores(f, y, means, vecs)
    for i in range(50):
        if 0 <= y[i] < 4:
            assert out[i] == pytest.approx(float(((f[i] - means[y[i]]) @ vecs[y[i]]) ** 2), rel=1e-5)
        else:
            assert np.isnan(out[i])


def test_class_moments_stream_and_merge_to_the_batch_statistics():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(300, 8)).astype(np.float32)
    y = rng.integers(0, 4, 300)  # class 4 stays empty
    whole = ClassMoments(5, 8).add(f, y)
    a = ClassMoments(5, 8).add(f[:100], y[:100]).add(f[100:170], y[100:170])
    b = ClassMoments(5, 8).add(f[170:], y[170:])
    merged = a.merge(b)
    np.testing.assert_allclose(merged.outer, whole.outer, rtol=1e-12)
    for c in range(4):
        fc = f[y == c].astype(np.float64)
        np.testing.assert_allclose(whole.mean()[c], fc.mean(0), rtol=1e-10)
        np.testing.assert_allclose(whole.covariance()[c], np.cov(fc.T, bias=True), atol=1e-10)
    assert whole.counts[4] == 0 and np.all(np.isnan(whole.mean()[4]))


def test_kernel_sources_ship_with_the_package():
    d = kernel_dir()
    for name in KERNEL_FILES:
        assert (d / name).is_file()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("name", KERNEL_FILES)
def test_kernels_compile_to_ptx(tmp_path, name):
    for arch in ("sm_80", "sm_90"):
        out = tmp_path / f"{name}.{arch}.ptx"
        proc = subprocess.run(["nvcc", "-ptx", f"-arch={arch}", str(kernel_dir() / name), "-o", str(out)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert ".visible .entry" in out.read_text()


@gpu
@pytest.mark.gpu
def test_gpu_kernels_match_their_numpy_twins():
    import cupy as cp

    from pudrt.engine.kernels import class_moments_add_gpu, kl_rows_gpu, projection_scores_gpu

    rng = np.random.default_rng(2)
    for k in (1, 10, 1000):
        a = rng.normal(0, 30, (257, k)).astype(np.float32)
        b = rng.normal(0, 30, (257, k)).astype(np.float32)
        np.testing.assert_allclose(cp.asnumpy(kl_rows_gpu(cp.asarray(a), cp.asarray(b))), kl_rows(a, b),
                                   rtol=1e-3, atol=1e-4)
    f = rng.normal(size=(300, 64)).astype(np.float32)
    y = rng.integers(-1, 6, 300)
    means = rng.normal(size=(5, 64)).astype(np.float32)
    vecs = rng.normal(size=(5, 64)).astype(np.float32)
    got = cp.asnumpy(projection_scores_gpu(cp.asarray(f), cp.asarray(y), cp.asarray(means), cp.asarray(vecs)))
    np.testing.assert_allclose(got, projection_scores(f, y, means, vecs), rtol=1e-4, equal_nan=True)
    moments = {"counts": cp.zeros(5), "sums": cp.zeros((5, 64)), "outer": cp.zeros((5, 64, 64))}
    class_moments_add_gpu(moments, cp.asarray(f), cp.asarray(y))
    ref = ClassMoments(5, 64).add(f, y)
    np.testing.assert_allclose(cp.asnumpy(moments["outer"]), ref.outer, rtol=1e-9)
    np.testing.assert_allclose(cp.asnumpy(moments["counts"]), ref.counts)
