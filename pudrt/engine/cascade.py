"""INT8 first, the float model where INT8 is unsure: a cascade runner for scanning.

INT8 changes a prediction mostly where the model is near a tie. Measured on
the engine benchmark's torchvision resnet18 (2 epochs on the embedded data,
INT8 as `quantize_int8` makes it on a VNNI CPU, 1,488 held-out test images;
one-off script, 2026-11-30): INT8 alone agreed with fp32 on 97.18%; re-running
through fp32 the images whose INT8 top-2 logit margin is among the lowest 5%
gave 98.92%, 10% gave 99.46%, 20% 99.53%. What stays are images that a clipped
activation moved far (their INT8 margin reached 1.96): no margin finds those.
resnet8 98.86% -> 99.73% / 100% at 5% / 10%; PreActResNet-18 99.13% -> 100% at 5%.

The cost is one float pass over the re-run share, in a smaller batch; the
engine benchmark measures the whole cascade beside the other competitors.

Two forms. `write_cascade` makes it one ONNX file (`pudrt export --int8
--cascade`): the INT8 graph, a top-2 margin test, and the float graph run on
the rows it selects (NonZero, Gather, ScatterND), so any ONNX Runtime consumer
runs the cascade with no pudrt code in the loop; an extra output `rerun` says
which rows went through float. An empty selection runs the float graph on a
batch of 0. `CascadeRunner` does the same with two runners of any kind (an
INT8 ONNX Runtime session before a TensorRT one, say).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pudrt.engine.runners import _as_numpy
from pudrt.errors import PudrtError
from pudrt.io.atomic import atomic_path

RERUN = "rerun"


def top2_margin(logits: np.ndarray) -> np.ndarray:
    """Each row's largest logit minus its second largest (0 for a tie)."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise PudrtError(f"a top-2 margin needs (N, classes >= 2) logits, got shape {logits.shape}")
    top = np.partition(logits, -2, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def margin_for_share(fast, images: np.ndarray, share: float, batch: int = 256) -> float:
    """The INT8 margin under which `share` of `images` (real images, e.g. the calibration set) fall: the
    cascade's threshold for re-running about that share of data like them."""
    if not 0 < share < 1:
        raise PudrtError(f"the re-run share must lie in (0, 1), got {share}")
    if len(images) < 16:
        raise PudrtError(f"choosing the cascade's margin needs real images; got {len(images)}")
    margins = np.concatenate([top2_margin(fast(images[i : i + batch])["logits"])
                              for i in range(0, len(images), batch)])
    return float(np.quantile(margins, share))


def margin_for_agreement(fast, exact, images: np.ndarray, agreement: float, most: float = 0.5,
                         batch: int = 256) -> tuple[float, float]:
    """The smallest INT8 margin threshold (and the share of `images` it re-runs) at which the cascade's top-1
    agreement with `exact` on `images` reaches `agreement`: the fewest lowest-margin rows whose re-running
    brings the rows that still disagree down to what `agreement` allows. At most `most` of the images; raises
    if even that does not reach it. Chosen on these images, so check it on others (the export does)."""
    if not 0 < agreement <= 1:
        raise PudrtError(f"the cascade's target agreement must lie in (0, 1], got {agreement}")
    if len(images) < 16:
        raise PudrtError(f"choosing the cascade's margin needs real images; got {len(images)}")
    margins, same = [], []
    for i in range(0, len(images), batch):
        quick, sure = fast(images[i : i + batch])["logits"], exact(images[i : i + batch])["logits"]
        margins.append(top2_margin(quick))
        same.append(quick.argmax(1) == sure.argmax(1))
    margin, same = np.concatenate(margins), np.concatenate(same)
    order = np.argsort(margin, kind="stable")
    # re-running the k lowest-margin rows makes them agree; the rows above still disagree where INT8 did
    disagree = (~same[order]).astype(np.int64)
    still = np.concatenate([np.cumsum(disagree[::-1])[::-1], [0]])  # still[k]: disagreeing rows from k on
    need = int(np.ceil(agreement * len(order) - 1e-9))
    k = int(np.flatnonzero(len(order) - still >= need)[0])
    if k > most * len(order):
        raise PudrtError(f"the cascade reaches {100 * agreement:.2f}% top-1 agreement on these images only by "
                         f"re-running {100 * k / len(order):.1f}% of them (more than {100 * most:.0f}%); the INT8 "
                         f"graph is too far from the float one")
    if k == 0:
        return 0.0, 0.0
    # the next float32 above the k-th lowest margin: the graph compares float32 margins with float32 `<`
    highest = np.float32(margin[order][k - 1])
    return float(np.nextafter(highest, np.float32(np.inf))), k / len(order)


class CascadeRunner:
    """`fast(x)` (e.g. the INT8 OrtRunner), then `exact(x)` (the fp32 one) on the rows whose fast top-2 logit
    margin is below `margin`; their logits and features are the exact runner's. Same interface as the runners
    (`runner(x) -> {"logits", "features"}`, a context manager that closes both); `rerun_share` says how much
    went through `exact`."""

    def __init__(self, fast, exact, margin: float):
        if not margin >= 0:
            raise PudrtError(f"the cascade's margin must be >= 0, got {margin}")
        self.fast, self.exact, self.margin = fast, exact, float(margin)
        self.seen = self.rerun = 0

    def __enter__(self) -> CascadeRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for runner in (self.fast, self.exact):
            if hasattr(runner, "close"):
                runner.close()

    @property
    def rerun_share(self) -> float:
        return self.rerun / self.seen if self.seen else 0.0

    def __call__(self, x) -> dict[str, np.ndarray]:
        x = _as_numpy(x)
        out = self.fast(x)
        rows = np.flatnonzero(top2_margin(out["logits"]) < self.margin)
        self.seen += len(x)
        self.rerun += len(rows)
        if len(rows):
            again = self.exact(x[rows])  # fancy indexing copies: contiguous
            out = {k: v.copy() for k, v in out.items()}
            for k in out.keys() & again.keys():
                out[k][rows] = again[k]
        return out


def write_cascade(int8: str | os.PathLike, fp32: str | os.PathLike, dst: str | os.PathLike, margin: float,
                  share: float | None = None) -> Path:
    """One ONNX file that runs the INT8 graph `int8` and re-runs the float graph `fp32` on the rows whose INT8
    top-2 logit margin is below `margin`: outputs `logits` and `features` (those rows' from fp32, the rest from
    INT8) and `rerun` (bool, per row). `share` (the calibration share the margin was chosen for) and the margin
    are kept in the file's metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not margin >= 0:
        raise PudrtError(f"the cascade's margin must be >= 0, got {margin}")
    fast, exact = onnx.load(str(int8)), onnx.load(str(fp32))
    for model, path in ((fast, int8), (exact, fp32)):
        outputs = [o.name for o in model.graph.output]
        if outputs[:2] != ["logits", "features"] or len(model.graph.input) != 1:
            raise PudrtError(f"{path}: a cascade joins two `pudrt export` graphs (one image input, outputs logits "
                             f"and features); this one has inputs {[i.name for i in model.graph.input]} and outputs "
                             f"{outputs}")
    classes = fast.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    if 0 < classes < 2:
        raise PudrtError(f"{int8}: a top-2 margin needs at least 2 classes, the model has {classes}")
    image = fast.graph.input[0]
    fast_nodes, fast_weights = _renamed(fast.graph, "int8/", image.name, image.name)
    exact_nodes, exact_weights = _renamed(exact.graph, "fp32/", exact.graph.input[0].name, "cascade/x_rerun")

    def node(op, inputs, outputs, **attrs):
        return helper.make_node(op, inputs, outputs, name=f"cascade/{outputs[0].split('/')[-1]}", **attrs)

    select = [  # the INT8 rows whose top-2 margin is under the threshold, and their images
        node("TopK", ["int8/logits", "cascade/two"], ["cascade/top", "cascade/top_index"], axis=-1),
        node("Gather", ["cascade/top", "cascade/0"], ["cascade/first"], axis=1),
        node("Gather", ["cascade/top", "cascade/1"], ["cascade/second"], axis=1),
        node("Sub", ["cascade/first", "cascade/second"], ["cascade/gap"]),
        node("Less", ["cascade/gap", "cascade/margin"], [RERUN]),
        node("NonZero", [RERUN], ["cascade/nonzero"]),  # (1, M)
        node("Transpose", ["cascade/nonzero"], ["cascade/rows_nd"], perm=[1, 0]),  # (M, 1): ScatterND's indices
        node("Squeeze", ["cascade/nonzero", "cascade/axis0"], ["cascade/rows"]),
        node("Gather", [image.name, "cascade/rows"], ["cascade/x_rerun"], axis=0),
    ]
    merge = [node("ScatterND", [f"int8/{name}", "cascade/rows_nd", f"fp32/{name}"], [name])
             for name in ("logits", "features")]
    constants = [numpy_helper.from_array(np.array([2], np.int64), "cascade/two"),
                 numpy_helper.from_array(np.array(0, np.int64), "cascade/0"),
                 numpy_helper.from_array(np.array(1, np.int64), "cascade/1"),
                 numpy_helper.from_array(np.array([0], np.int64), "cascade/axis0"),
                 numpy_helper.from_array(np.array(margin, np.float32), "cascade/margin")]
    batch = image.type.tensor_type.shape.dim[0]
    outputs = [onnx.ValueInfoProto() for _ in range(2)]
    for out, src in zip(outputs, fast.graph.output[:2], strict=True):
        out.CopyFrom(src)
    outputs.append(helper.make_tensor_value_info(RERUN, TensorProto.BOOL, [batch.dim_param or batch.dim_value]))
    graph = helper.make_graph(fast_nodes + select + exact_nodes + merge, "pudrt-int8-cascade", [image], outputs,
                              fast_weights + exact_weights + constants)
    opsets: dict[str, int] = {}
    for opset in [*fast.opset_import, *exact.opset_import]:
        opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="pudrt")
    model.ir_version = max(fast.ir_version, exact.ir_version)
    meta = {"pudrt.cascade.margin": repr(float(margin))}
    if share is not None:
        meta["pudrt.cascade.calibration_share"] = repr(float(share))
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return dst


def _renamed(graph, prefix: str, image: str, new_image: str):
    """`graph`'s nodes and initializers with every name prefixed, its image input renamed to `new_image`."""
    import onnx

    def name(value: str) -> str:
        return value if value == "" else new_image if value == image else prefix + value

    nodes = []
    for old in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in old.attribute):
            raise PudrtError(f"node {old.name or old.op_type} holds a subgraph; a cascade joins plain "
                             f"`pudrt export` graphs")
        new = onnx.NodeProto()
        new.CopyFrom(old)
        new.name = prefix + (old.name or old.op_type)
        new.input[:] = [name(v) for v in old.input]
        new.output[:] = [name(v) for v in old.output]
        nodes.append(new)
    weights = []
    for old in graph.initializer:
        new = onnx.TensorProto()
        new.CopyFrom(old)
        new.name = prefix + old.name
        weights.append(new)
    return nodes, weights
