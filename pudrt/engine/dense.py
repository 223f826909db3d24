"""Convolutions over tiny feature maps, rewritten as dense matrix products: an exact rewrite for CPUs.

A CIFAR-sized image through an ImageNet architecture (torchvision resnet18 at
32×32) leaves the last stages with 2×2 and 1×1 feature maps. ONNX Runtime's CPU
convolutions are built for large maps and run these at a fraction of their speed:
measured on a 2-core AVX-512 Xeon, batch 256, a 3×3 convolution of 256 channels
on 2×2 maps took 7 ms (half of resnet18's forward time was its four such layers),
and the transposed convolutions of the gradient graphs were slower still.

A convolution on a fixed Hi×Wi input is a linear map, so it equals one matrix
product: D[(ci, iy, ix), (co, oy, ox)] = w[co, ci, ky, kx] wherever
iy = oy·s − p + ky·d lies inside the input (a transposed convolution is the same
map read the other way round). When the map is small the dense product does no
more multiply-adds than the convolution (each output sees every input pixel
anyway, and the taps that would read padding are simply absent), and a GEMM runs
near the machine's peak. The rewrite is Flatten → Gemm → Reshape, standard ONNX,
so any engine reads the result; the export check compares it with torch as before.

Which layers are rewritten: 2-D, ungrouped, constant weights, static spatial
shape, dense multiply-adds at most `RATIO[op]` × the convolution's own, and a
dense matrix of at most `MAX_ELEMENTS`. The gradient graphs compute some weights
(flipped kernels), so ONNX Runtime's hardware-independent basic optimisation
(constant folding, BatchNorm into Conv) runs first and its output is what is
rewritten.
"""

from __future__ import annotations

import logging
import os
import tempfile
from itertools import product
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Dense multiply-adds allowed, as a multiple of the convolution's. ONNX Runtime's ConvTranspose
# (GEMM + col2im) ran at a third of Conv's rate on small maps, so it pays off a little earlier.
RATIO = {"Conv": 1.0, "ConvTranspose": 2.0}
MAX_ELEMENTS = 1 << 22  # 16 MB of float32 per rewritten layer


def densify(path: str | os.PathLike) -> int:
    """Rewrite the ONNX file at `path` in place: constants folded, tiny convolutions as GEMMs.

    Returns how many convolutions were rewritten; the file is left as it was when none qualifies.
    """
    import onnx

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="pudrt-dense-") as tmp:
        folded = Path(tmp) / "folded.onnx"
        try:
            _fold_constants(path, folded)
        except Exception as err:  # noqa: BLE001 - ORT raises its own pybind types
            # the export check that follows loads the file too and explains the failure there
            log.warning("left %s as exported: ONNX Runtime could not load it (%s)", path.name,
                        str(err).splitlines()[0][:200])
            return 0
        model = onnx.load(str(folded))
    count = lower_small_convs(model)
    if count:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as err:
            log.warning("left %s as exported: its dense rewrite is not valid ONNX (%s)", path.name,
                        str(err).splitlines()[0][:200])
            return 0
        onnx.save(model, str(path))
        log.info("rewrote %d convolution(s) on tiny feature maps as dense matrix products", count)
    return count


def _fold_constants(src: Path, dst: Path) -> None:
    """ONNX Runtime's basic level: constant folding and exact fusions, standard ONNX ops only."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.intra_op_num_threads = 1
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def lower_small_convs(model, ratio: dict[str, float] | None = None, max_elements: int = MAX_ELEMENTS) -> int:
    """Replace every qualifying Conv/ConvTranspose of `model` (an onnx.ModelProto) by Flatten → Gemm → Reshape."""
    from onnx import helper, numpy_helper, shape_inference

    ratio = RATIO if ratio is None else ratio
    shapes = _static_shapes(shape_inference.infer_shapes(model, data_prop=True))
    inits = {i.name: i for i in model.graph.initializer}
    nodes, added, count = [], [], 0
    for node in model.graph.node:
        plan = _plan(node, shapes, inits, ratio, max_elements)
        if plan is None:
            nodes.append(node)
            continue
        matrix, bias, out_shape = plan
        stem = f"{node.name or node.output[0]}_dense"
        added += [numpy_helper.from_array(matrix, stem + "_weight"),
                  numpy_helper.from_array(np.array([-1, *out_shape], np.int64), stem + "_shape")]
        gemm_inputs = [stem + "_flat", stem + "_weight"]
        if bias is not None:
            added.append(numpy_helper.from_array(bias, stem + "_bias"))
            gemm_inputs.append(stem + "_bias")
        nodes += [helper.make_node("Flatten", [node.input[0]], [stem + "_flat"], name=stem + "_flatten", axis=1),
                  helper.make_node("Gemm", gemm_inputs, [stem + "_gemm"], name=stem + "_gemm"),
                  helper.make_node("Reshape", [stem + "_gemm", stem + "_shape"], [node.output[0]],
                                   name=stem + "_reshape")]
        count += 1
    if not count:
        return 0
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for n in model.graph.node for name in n.input}
    kept = [i for i in model.graph.initializer if i.name in used] + added
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return count


def _static_shapes(model) -> dict[str, list[int | None]]:
    shapes = {}
    for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def _plan(node, shapes, inits, ratio, max_elements):
    """(dense matrix, bias or None, output C×H×W) for a convolution worth rewriting, else None."""
    from onnx import helper, numpy_helper

    if node.op_type not in ratio or len(node.input) < 2 or node.input[1] not in inits:
        return None
    if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if attrs.get("group", 1) != 1 or (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) != "NOTSET":
        return None
    if "output_shape" in attrs:  # a ConvTranspose whose padding the engine derives; leave it to the engine
        return None
    x_shape, y_shape = shapes.get(node.input[0]), shapes.get(node.output[0])
    if not x_shape or not y_shape or len(x_shape) != 4 or len(y_shape) != 4:
        return None
    if not all(x_shape[1:]) or not all(y_shape[1:]):
        return None
    w = numpy_helper.to_array(inits[node.input[1]])
    if w.dtype != np.float32 or w.ndim != 4:  # the rewrite is written for float32 2-D convolutions
        return None
    transposed = node.op_type == "ConvTranspose"
    # weights in (input channel, output channel, kh, kw) order for both ops
    w_io = w if transposed else w.transpose(1, 0, 2, 3)
    (_, ci, hi, wi), (_, co, ho, wo) = x_shape, y_shape
    kh, kw = w.shape[2:]
    if w_io.shape[:2] != (ci, co):
        return None
    conv_macs = ci * co * kh * kw * (hi * wi if transposed else ho * wo)
    dense_macs = ci * hi * wi * co * ho * wo
    if dense_macs > ratio[node.op_type] * conv_macs or dense_macs > max_elements:
        return None
    stride = attrs.get("strides", [1, 1])
    dilation = attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    matrix = np.zeros((ci, hi, wi, co, ho, wo), np.float32)
    small, large = ((hi, wi), (ho, wo)) if transposed else ((ho, wo), (hi, wi))
    for (a, b), (ky, kx) in product(product(range(small[0]), range(small[1])), product(range(kh), range(kw))):
        # a conv reads input (a·s − p + k·d) for output a; a transposed conv writes output (a·s − p + k·d)
        r, c = a * stride[0] - pads[0] + ky * dilation[0], b * stride[1] - pads[1] + kx * dilation[1]
        if not (0 <= r < large[0] and 0 <= c < large[1]):
            continue
        if transposed:
            matrix[:, a, b, :, r, c] += w_io[:, :, ky, kx]
        else:
            matrix[:, r, c, :, a, b] += w_io[:, :, ky, kx]
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = np.repeat(numpy_helper.to_array(inits[node.input[2]]).astype(np.float32), ho * wo)
    return matrix.reshape(ci * hi * wi, co * ho * wo), bias, (co, ho, wo)
