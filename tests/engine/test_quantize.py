import pytest
import torch

from pudrt.engine import OrtRunner, export_onnx
from pudrt.engine.quantize import quantize_int8
from pudrt.errors import PudrtError
from pudrt.io import iter_batches


def test_int8_export_agrees_with_fp32_on_real_images(tmp_path, trained_resnet8, test_data):
    batches = iter_batches(test_data, 256, workers=0)
    calib, check = next(batches).float(), next(batches).float()
    fp32 = export_onnx(trained_resnet8, tmp_path / "fp32.onnx", calib[:2])
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", calib.numpy())
    with OrtRunner(fp32, device="cpu") as a, OrtRunner(int8, device="cpu") as b:
        ref, got = a(check), b(check)
    agreement = float((ref["logits"].argmax(1) == got["logits"].argmax(1)).mean())
    assert agreement >= 0.95, agreement
    assert got["features"].shape == ref["features"].shape
    assert int8.stat().st_size < fp32.stat().st_size


def test_int8_needs_real_calibration_images(tmp_path, images):
    fp32 = export_onnx(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)), tmp_path / "m.onnx",
                       images[:2])
    with pytest.raises(PudrtError, match="calibration needs real images"):
        quantize_int8(fp32, tmp_path / "q.onnx", images[:4].numpy())
