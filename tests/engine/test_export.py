import numpy as np
import pytest
import torch
import torch.nn as nn

from pudrt.engine import OrtRunner, TorchRunner, compare, export_onnx
from pudrt.engine.export import reference_outputs
from pudrt.errors import PudrtError


@pytest.mark.parametrize("arch", ["resnet8", "preactresnet18", "resnet18"])
def test_ort_and_torch_agree_on_logits_and_features(random_model, tmp_path, arch, images):
    model = random_model(arch)
    path = export_onnx(model, tmp_path / f"{arch}.onnx", images[:2])
    x = torch.cat([images, images, images])[:37]
    with OrtRunner(path, device="cpu") as runner:
        assert runner.provider == "CPUExecutionProvider"
        assert runner.outputs == ("logits", "features") and runner.fixed_batch is None
        for batch in (x[:1], x):
            got = runner(batch)
            ref = reference_outputs(model, batch)
            agreement = compare(ref, got, atol=1e-4, rtol=1e-4)
            assert agreement.passed, agreement.describe()
            assert got["logits"].shape == (len(batch), 10)


def test_torch_runner_matches_the_model(random_model, images):
    model = random_model("resnet8")
    with TorchRunner(model) as runner:
        out = runner(images)
    with torch.no_grad():
        np.testing.assert_allclose(out["logits"], model(images).numpy(), atol=1e-6)
    assert out["features"].shape == (len(images), 64)


def test_cuda_request_is_refused_or_reported_as_cpu(random_model, tmp_path, images):
    path = export_onnx(random_model("resnet8"), tmp_path / "m.onnx", images[:2])
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has the CUDA provider; the CPU-only behaviour is not testable here")
    with pytest.raises(PudrtError, match="asked for cuda but cannot run there.*CUDAExecutionProvider is not in"):
        OrtRunner(path, device="cuda")
    with OrtRunner(path, device="cuda", allow_fallback=True) as runner:
        assert runner.provider == "CPUExecutionProvider"
        assert "onnxruntime-gpu" in runner.fallback_reason
        assert runner(images)["logits"].shape == (len(images), 10)


def test_a_head_that_is_not_linear_is_explained(tmp_path, images):
    model = nn.Sequential(nn.Conv2d(3, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(PudrtError, match="nn.Linear"):
        export_onnx(model, tmp_path / "m.onnx", images[:2])


def _plain_onnx(path, model, example, output_names):
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=["input"], output_names=output_names,
                                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    program.save(str(path))
    return path


def test_onnx_with_wrong_input_shape_is_explained(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).eval()
    path = _plain_onnx(tmp_path / "mnist.onnx", model, torch.rand(2, 1, 28, 28), ["logits"])
    with pytest.raises(PudrtError, match=r"pudrt feeds float32 images of shape \(N, 3, H, W\)"):
        OrtRunner(path, device="cpu")


def test_onnx_without_features_is_explained(random_model, tmp_path, images):
    model = random_model("resnet8")
    path = _plain_onnx(tmp_path / "logits.onnx", model, images[:2], ["logits"])
    with OrtRunner(path, device="cpu") as runner:
        assert not runner.has_features
        assert runner(images)["logits"].shape == (len(images), 10)
        with pytest.raises(PudrtError, match="no 'features' output"):
            runner.require_features()
    path = _plain_onnx(tmp_path / "unnamed.onnx", model, images[:2], ["output"])
    with pytest.raises(PudrtError, match="needs one named 'logits'"):
        OrtRunner(path, device="cpu")


def test_corrupt_onnx_is_a_clear_error(random_model, tmp_path, images):
    path = export_onnx(random_model("resnet8"), tmp_path / "m.onnx", images[:2])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(PudrtError, match="not a loadable ONNX model"):
        OrtRunner(path, device="cpu")
    (tmp_path / "junk.onnx").write_bytes(b"not protobuf at all")
    with pytest.raises(PudrtError, match="not a loadable ONNX model"):
        OrtRunner(tmp_path / "junk.onnx", device="cpu")
