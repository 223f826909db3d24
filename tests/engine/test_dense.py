import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from pudrt.engine import OrtRunner, export_onnx
from pudrt.engine.dense import densify


def _single_conv(path, op, x_shape, w, bias, stride, pad, dilation, output_padding=0, y_shape=None):
    """An ONNX file holding one Conv or ConvTranspose with a dynamic batch."""
    attrs = {"strides": [stride] * 2, "pads": [pad] * 4, "dilations": [dilation] * 2}
    if op == "ConvTranspose":
        attrs["output_padding"] = [output_padding] * 2
    inputs = ["input", "w"] + (["b"] if bias is not None else [])
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(bias, "b")] if bias is not None else [])
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["out"], name="conv", **attrs)], "one",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *x_shape])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", *(y_shape or [None] * 3)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


def _run(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


CASES = [  # op, channels in/out, input size, kernel, stride, pad, dilation, output padding
    ("Conv", 8, 6, 2, 3, 1, 1, 1, 0),  # stride 1 on 2×2: every output sees every input pixel
    ("Conv", 8, 6, 1, 3, 1, 1, 1, 0),  # 1×1 map: only the kernel's centre reads data
    ("Conv", 8, 6, 2, 3, 2, 1, 1, 0),  # stride 2, 2×2 → 1×1
    ("Conv", 4, 5, 3, 3, 1, 2, 2, 0),  # dilation 2, non-square-friendly 3×3 map
    ("ConvTranspose", 8, 6, 1, 3, 2, 1, 1, 1),  # the backward of a stride-2 conv: 1×1 → 2×2
    ("ConvTranspose", 6, 4, 2, 3, 2, 1, 1, 1),  # 2×2 → 4×4
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[3]}px-s{c[5]}-d{c[7]}" for c in CASES])
@pytest.mark.parametrize("with_bias", [True, False])
def test_tiny_convolutions_become_exact_dense_products(tmp_path, case, with_bias):
    op, cin, cout, size, k, stride, pad, dilation, out_pad = case
    rng = np.random.default_rng(0)
    w_shape = (cout, cin, k, k) if op == "Conv" else (cin, cout, k, k)
    w = rng.standard_normal(w_shape).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32) if with_bias else None
    x = rng.standard_normal((5, cin, size, size)).astype(np.float32)
    tw, tb, tx = torch.from_numpy(w), None if bias is None else torch.from_numpy(bias), torch.from_numpy(x)
    if op == "Conv":
        ref = F.conv2d(tx, tw, tb, stride, pad, dilation)
    else:
        ref = F.conv_transpose2d(tx, tw, tb, stride, pad, out_pad, dilation=dilation)
    path = tmp_path / "one.onnx"
    _single_conv(path, op, (cin, size, size), w, bias, stride, pad, dilation, out_pad, list(ref.shape[1:]))

    assert densify(path) == 1
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert op not in ops and "Gemm" in ops
    got = _run(path, x)
    assert got.shape == tuple(ref.shape)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-5)
    assert _run(path, x[:1]).shape[0] == 1  # the batch stays dynamic


@pytest.mark.parametrize("why, op, size, extra", [
    ("large map", "Conv", 8, {}),
    ("grouped", "Conv", 2, {"group": 2}),
    ("padding left to the engine", "ConvTranspose", 1, {"output_shape": [2, 2]}),
])
def test_convolutions_that_would_not_gain_are_left_alone(tmp_path, why, op, size, extra):
    w = np.ones((4, 4 // extra.get("group", 1), 3, 3), np.float32)
    path = tmp_path / "one.onnx"
    _single_conv(path, op, (4, size, size), w, None, 2 if op == "ConvTranspose" else 1, 1, 1)
    if extra:
        model = onnx.load(str(path))
        model.graph.node[0].attribute.extend(helper.make_attribute(k, v) for k, v in extra.items())
        onnx.save(model, str(path))
    before = path.read_bytes()
    assert densify(path) == 0, why
    assert path.read_bytes() == before


def test_resnet18_export_rewrites_its_tiny_stages_and_still_agrees(random_model, tmp_path, images):
    """torchvision resnet18 at 32×32: layer3 runs on 2×2 maps and layer4 on 1×1; those convolutions go dense."""
    model = random_model("resnet18")
    dense = export_onnx(model, tmp_path / "dense.onnx", images[:2])
    plain = export_onnx(model, tmp_path / "plain.onnx", images[:2], dense=False)
    convs = {p: sum(n.op_type == "Conv" for n in onnx.load(str(p)).graph.node) for p in (dense, plain)}
    assert convs[plain] == 20 and convs[dense] == 13
    with OrtRunner(dense, device="cpu") as a, OrtRunner(plain, device="cpu") as b:
        got, ref = a(images), b(images)
    for name in ("logits", "features"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-5)
