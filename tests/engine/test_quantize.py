import pytest
import torch

from pudrt.engine import OrtRunner, export_onnx
from pudrt.engine.quantize import quantize_int8
from pudrt.errors import PudrtError
from pudrt.io import iter_batches


@pytest.fixture(scope="module")
def trained_fp32(trained_resnet8, tmp_path_factory):
    """The trained resnet8 exported once for this module's INT8 tests (an export takes 7-14 s here)."""
    return export_onnx(trained_resnet8, tmp_path_factory.mktemp("fp32") / "fp32.onnx", torch.rand(2, 3, 32, 32))


def test_int8_export_agrees_with_fp32_on_real_images(tmp_path, trained_fp32, test_data):
    batches = iter_batches(test_data, 256, workers=0)
    calib, check = next(batches).float(), next(batches).float()
    fp32 = trained_fp32
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", calib.numpy())
    with OrtRunner(fp32, device="cpu") as a, OrtRunner(int8, device="cpu") as b:
        ref, got = a(check), b(check)
    agreement = float((ref["logits"].argmax(1) == got["logits"].argmax(1)).mean())
    assert agreement >= 0.95, agreement
    assert got["features"].shape == ref["features"].shape
    assert int8.stat().st_size < fp32.stat().st_size


def test_unsigned_int8_weights_do_not_saturate_without_vnni(tmp_path, trained_fp32, test_data):
    # ONNX Runtime's u8s8 kernels saturate on full-range signed weights where the CPU lacks VNNI; unsigned
    # weights run on its u8u8 kernels, which its quantization guide names as free of that, so all 8 bits count
    from pudrt.system import cpu_has_vnni

    batches = iter_batches(test_data, 256, workers=0)
    calib, check = next(batches).float(), torch.cat([next(batches).float() for _ in range(3)])
    fp32 = trained_fp32
    unsigned = quantize_int8(fp32, tmp_path / "u8.onnx", calib.numpy(), unsigned_weights=True)
    signed = quantize_int8(fp32, tmp_path / "s8.onnx", calib.numpy(), reduce_range=False)
    assert _unsigned_weight_spread(unsigned) > 128  # all 8 bits used, not 7
    pred = {}
    for name, path in (("fp32", fp32), ("unsigned", unsigned), ("signed", signed)):
        with OrtRunner(path, device="cpu") as runner:
            pred[name] = runner(check)["logits"].argmax(1)
    agree_u, agree_s = (float((pred[k] == pred["fp32"]).mean()) for k in ("unsigned", "signed"))
    assert agree_u >= 0.97, agree_u
    if cpu_has_vnni() is False:  # here (AVX2-only EPYC): 94.5% vs about 99% on 1,488 images
        assert agree_u >= agree_s + 0.02, (agree_u, agree_s)
    with pytest.raises(PudrtError, match="unsigned INT8 weights are 8-bit"):
        quantize_int8(fp32, tmp_path / "x.onnx", calib.numpy(), reduce_range=True, unsigned_weights=True)


def test_cascade_reruns_int8s_near_ties_through_fp32_in_python_and_in_one_onnx_file(tmp_path, trained_fp32,
                                                                                     test_data):
    import numpy as np
    import onnx

    from pudrt.engine.cascade import CascadeRunner, margin_for_agreement, margin_for_share, top2_margin, write_cascade

    batches = iter_batches(test_data, 256, workers=0)
    calib, check = next(batches).float().numpy(), torch.cat([next(batches).float() for _ in range(3)]).numpy()
    int8 = quantize_int8(trained_fp32, tmp_path / "int8.onnx", calib)
    with OrtRunner(trained_fp32, device="cpu") as exact, OrtRunner(int8, device="cpu") as fast:
        ref, alone = exact(check), fast(check)
        margin = margin_for_share(fast, calib, 0.1)
        joined = CascadeRunner(fast, exact, margin)
        in_python = joined(check)
        with pytest.raises(PudrtError, match="re-run share must lie in"):
            margin_for_share(fast, calib, 0.0)
        with pytest.raises(PudrtError, match="margin must be >= 0"):
            CascadeRunner(fast, exact, -1.0)
    path = write_cascade(int8, trained_fp32, tmp_path / "cascade.onnx", margin, share=0.1)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert float(meta["pudrt.cascade.margin"]) == margin and meta["pudrt.cascade.calibration_share"] == "0.1"
    with OrtRunner(path, device="cpu") as cascade:
        assert cascade.outputs == ("logits", "features", "rerun")
        in_onnx = cascade(check)
        one, empty = cascade(check[:1]), cascade(check[:0])  # a batch of 1, and a batch with nothing to re-run
    assert one["logits"].shape == (1, 10) and empty["features"].shape == (0, ref["features"].shape[1])
    rerun = top2_margin(alone["logits"]) < np.float32(margin)
    np.testing.assert_array_equal(in_onnx["rerun"], rerun)
    assert 0.03 < joined.rerun_share == rerun.mean() < 0.3, joined.rerun_share  # about the share asked for
    for got in (in_python, in_onnx):
        for key in ("logits", "features"):  # near ties come from fp32, the rest from INT8 as it was
            np.testing.assert_allclose(got[key][rerun], ref[key][rerun], rtol=1e-4, atol=1e-4)
            np.testing.assert_array_equal(got[key][~rerun], alone[key][~rerun])
        agree = [float((out["logits"].argmax(1) == ref["logits"].argmax(1)).mean()) for out in (alone, got)]
        assert agree[1] >= agree[0] and agree[1] >= 0.98, agree
    for threshold, expect in ((0.0, alone), (1e9, ref)):  # nothing re-run: INT8; everything: fp32
        with OrtRunner(write_cascade(int8, trained_fp32, tmp_path / "t.onnx", threshold), device="cpu") as runner:
            out = runner(check[:37])
        assert out["rerun"].all() == (threshold > 0) and out["rerun"].any() == (threshold > 0)
        np.testing.assert_allclose(out["logits"], expect["logits"][:37], rtol=1e-4, atol=1e-4)
    with OrtRunner(trained_fp32, device="cpu") as exact, OrtRunner(int8, device="cpu") as fast:
        fast_logits, truth = fast(calib)["logits"], exact(calib)["logits"].argmax(1)
        margins = top2_margin(fast_logits)

        def agrees(rows):
            return (np.where(rows, truth, fast_logits.argmax(1)) == truth).mean()

        for target in (0.99, 1.0):  # the least re-run share that reaches the target on the images it is chosen on
            least, share = margin_for_agreement(fast, exact, calib, target)
            rows = margins < np.float32(least)
            assert rows.mean() >= share and agrees(rows) >= target, (target, share, agrees(rows))
            if share == 0:  # INT8 alone reaches it here
                assert agrees(np.zeros_like(rows)) >= target
                continue
            fewer = rows.copy()  # one row fewer (the re-run row of highest margin) misses it
            fewer[np.flatnonzero(rows)[margins[rows].argmax()]] = False
            assert agrees(fewer) < target
        with pytest.raises(PudrtError, match="only by re-running"):
            margin_for_agreement(fast, exact, calib, 1.0, most=0.0)
    with pytest.raises(PudrtError, match="margin must be >= 0"):
        write_cascade(int8, trained_fp32, tmp_path / "x.onnx", -1.0)
    from pudrt.engine.grad import export_grad_graph

    grad = export_grad_graph(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)),
                             tmp_path / "g.onnx", torch.rand(2, 3, 32, 32), "ce")
    with pytest.raises(PudrtError, match="joins two `pudrt export` graphs"):
        write_cascade(int8, grad, tmp_path / "x.onnx", margin)
    assert not (tmp_path / "x.onnx").exists()


def test_int8_needs_real_calibration_images(tmp_path, images):
    fp32 = export_onnx(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)), tmp_path / "m.onnx",
                       images[:2])
    with pytest.raises(PudrtError, match="calibration needs real images"):
        quantize_int8(fp32, tmp_path / "q.onnx", images[:4].numpy())


def _weight_range(path) -> int:
    """The largest |value| over the INT8 weight initializers of a QDQ model."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return max(int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max()) for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.INT8)


def _unsigned_weight_spread(path) -> int:
    """max - min over the UINT8 convolution weights of a QDQ model (activations' zero points are scalars)."""
    import onnx
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(t).astype(int) for t in onnx.load(str(path)).graph.initializer
               if t.data_type == onnx.TensorProto.UINT8 and len(t.dims) == 4]
    assert weights, "no UINT8 convolution weights"
    return max(int(w.max() - w.min()) for w in weights)


@pytest.mark.parametrize("vnni", [True, False])
def test_int8_weights_are_7_bit_unless_the_cpu_has_vnni(tmp_path, random_model, test_data, monkeypatch, vnni):
    # without VNNI, ONNX Runtime's u8s8 kernels saturate on 8-bit weights (measured on an AVX2-only EPYC:
    # agreement 94.5% -> 98.9% with 7-bit), so the default follows the CPU; either can be asked for
    import pudrt.engine.quantize as quantize

    calib = next(iter_batches(test_data, 64, workers=0)).float()
    fp32 = export_onnx(random_model("resnet8"), tmp_path / "fp32.onnx", calib[:2])
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: vnni)
    default = _weight_range(quantize_int8(fp32, tmp_path / "auto.onnx", calib.numpy()))
    assert default == (127 if vnni else 64), default  # symmetric: ±127, or ±64 at 7 bits
    assert _weight_range(quantize_int8(fp32, tmp_path / "r.onnx", calib.numpy(), reduce_range=True)) == 64
    assert _weight_range(quantize_int8(fp32, tmp_path / "f.onnx", calib.numpy(), reduce_range=False)) == 127


def test_the_cpu_is_asked_for_vnni_where_it_can_be():
    import platform

    from pudrt.system import cpu_has_vnni

    answer = cpu_has_vnni()
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert isinstance(answer, bool)
    else:
        assert answer is None
