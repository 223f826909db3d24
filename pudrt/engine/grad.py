"""ONNX graphs that contain an input gradient, so attacks run on an engine with no PyTorch in the loop.

How: trace `torch.func.grad` of the loss with `make_fx` and torch's decomposition
tables, so the backward pass becomes ordinary forward ops. The one op with no
usable decomposition, `aten.convolution_backward`, gets ours: the input gradient
of a convolution is a transposed convolution of the output gradient with the same
weights, which for stride 1 is a plain convolution with the flipped kernel (only
the input gradient; weights are constants of these graphs). The
traced graph is then exported with the dynamo exporter like any module, and its
convolutions on tiny maps, forward and backward, become dense products
(`pudrt.engine.dense`).

Graphs (all with a dynamic batch; images float32 NCHW in [0, 1]):

- `ce`:  (input, label) -> grad = ∂/∂x Σ CE(f(x), y)            (sum, so per-sample gradients
                                                                  do not depend on the batch)
- `kl`:  (input, delta) -> grad = ∂/∂δ Σ KL(softmax f(x) ‖ softmax f(x+δ))  (AdvrBD's score)
- `pgd`: (input, label, start, eps, alpha) -> x_adv, logits: k unrolled untargeted L∞ PGD steps
  from `start` (pass `input` for no random start): sign step, projection onto the ε-ball
  around `input` and onto [0, 1]. One step is traced and exported; the k steps are k copies
  of its nodes chained in the ONNX graph, sharing its weights (`chain_steps`), since
  tracing and exporting all k took about 8 s more per step (resnet8, 7 steps: 68 s).

Float32 ties at ReLU and max-pool kinks are resolved differently by the two
backends on a small fraction of samples, so comparisons against autograd are
statistical: the fraction of samples within tolerance, not all of them.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pudrt.engine.dense import densify
from pudrt.errors import PudrtError
from pudrt.io.atomic import atomic_path
from pudrt.models import as_pair

log = logging.getLogger(__name__)

aten = torch.ops.aten
GRAPHS = ("ce", "kl", "pgd")


def _convolution_backward(grad_out, inp, weight, bias_sizes, stride, padding, dilation, transposed,
                          output_padding, groups, output_mask):
    """Input gradient of a (non-transposed) convolution, as a convolution an engine runs fast.

    Stride 1: a plain convolution of the output gradient with the spatially flipped,
    in/out-swapped kernel and padding k − 1 − p. Engines optimise Conv far better than
    ConvTranspose on CPUs (ONNX Runtime's ConvTranspose is GEMM + col2im), and the
    weight transform is constant-folded at export. Strided convolutions keep the
    transposed convolution, with the output padding that restores the input size.
    """
    if transposed or output_mask[1] or output_mask[2]:
        return NotImplemented
    dims = inp.dim() - 2
    kernel = [weight.shape[2 + i] for i in range(dims)]
    if groups == 1 and all(s == 1 for s in stride) and all(d == 1 for d in dilation) and all(
        k - 1 - p >= 0 for k, p in zip(kernel, padding, strict=True)
    ):
        flipped = weight.flip(list(range(2, 2 + dims))).transpose(0, 1)
        pad = [k - 1 - p for k, p in zip(kernel, padding, strict=True)]
        grad_in = aten.convolution.default(grad_out, flipped, None, [1] * dims, pad, [1] * dims, False,
                                           [0] * dims, 1)
        return grad_in, None, None
    extra = [
        inp.shape[2 + i]
        - ((grad_out.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1)
        for i in range(dims)
    ]
    grad_in = aten.convolution.default(grad_out, weight, None, stride, padding, dilation, True, extra, groups)
    return grad_in, None, None


def _threshold_backward(grad_out, inp, threshold):
    """ReLU's backward as a product with the mask instead of torch's `where(x <= t, 0, g)`.

    Equal for finite gradients; ONNX Runtime's CPU Where ran at a third of the speed of
    Greater + Cast + Mul (8.9 vs 3.2 ms on a 256×64×16×16 map), and a resnet has one per ReLU.
    """
    return grad_out * (inp > threshold).to(grad_out.dtype)


def decompositions() -> dict:
    from torch._decomp import core_aten_decompositions, get_decompositions

    table = dict(core_aten_decompositions())
    # backward ops that torch can decompose but the core table leaves alone
    table.update(get_decompositions([aten.max_pool2d_with_indices_backward, aten.avg_pool2d_backward,
                                     aten._adaptive_avg_pool2d_backward]))
    table[aten.convolution_backward.default] = _convolution_backward
    table[aten.threshold_backward.default] = _threshold_backward
    return table


def _frozen(model: nn.Module) -> nn.Module:
    pair = as_pair(model).eval().cpu()
    for p in pair.parameters():  # weights are constants of the graph: only the input gradient is traced
        p.requires_grad_(False)
    return pair


def ce_grad_fn(pair: nn.Module):
    def loss(x, y):
        return F.cross_entropy(pair(x)[0], y, reduction="sum")

    grad = torch.func.grad(loss)

    def fn(x, y):
        return grad(x, y)

    return fn


def kl_grad_fn(pair: nn.Module):
    def loss(delta, x):
        p_log = F.log_softmax(pair(x)[0], dim=1).detach()
        q_log = F.log_softmax(pair(x + delta)[0], dim=1)
        return F.kl_div(q_log, p_log, reduction="sum", log_target=True)

    grad = torch.func.grad(loss)

    def fn(x, delta):
        return grad(delta, x)

    return fn


def pgd_fn(pair: nn.Module, steps: int):
    grad = ce_grad_fn(pair)

    def fn(x, y, start, eps, alpha):
        x_adv = start
        for _ in range(steps):
            g = grad(x_adv, y)
            x_adv = torch.minimum(torch.maximum(x_adv + alpha * g.sign(), x - eps), x + eps).clamp(0.0, 1.0)
        return x_adv, pair(x_adv)[0]

    return fn


def chain_steps(step, steps: int):
    """The k-step PGD graph from the ONNX graph of one step: `steps` copies of its nodes, each one's `start` the
    previous one's `x_adv`, sharing the weights (initializers) and the inputs `input`, `label`, `eps`, `alpha`.
    Only the last copy computes `logits`; what no step changes is computed once. None when the graph holds
    subgraphs or functions (the caller then exports all the steps unrolled)."""
    import onnx

    graph = step.graph
    if step.functions or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                             for n in graph.node for a in n.attribute):
        return None
    shared = {t.name for t in graph.initializer} | {"input", "label", "eps", "alpha", ""}
    # nodes that read nothing a step changes (the ε-ball's bounds, folded weights) are the same in every copy:
    # they are computed once, before the steps
    invariant, nodes = set(), []
    for node in graph.node:
        if "start" not in node.input and all(v in shared for v in node.input) and not node.op_type.startswith(
                "Random"):
            shared.update(node.output)
            invariant.add(id(node))
            nodes.append(node)
    needed, for_x = {"x_adv"}, []  # the other nodes that x_adv depends on, for the copies before the last
    for node in reversed(graph.node):
        if needed.intersection(node.output) and id(node) not in invariant:
            for_x.append(node)
            needed.update(node.input)
    for_x.reverse()
    previous = "start"
    for i in range(steps):
        last = i == steps - 1

        def rename(value, i=i, last=last, previous=previous):
            if value in shared:
                return value
            if value == "start":
                return previous
            if last and value in ("x_adv", "logits"):
                return value
            return f"step{i}/{value}"

        for k, node in enumerate([n for n in graph.node if id(n) not in invariant] if last else for_x):
            copy_ = onnx.NodeProto()
            copy_.CopyFrom(node)
            copy_.name = f"step{i}/{node.name or k}"
            copy_.input[:] = [rename(v) for v in node.input]
            copy_.output[:] = [rename(v) for v in node.output]
            nodes.append(copy_)
        previous = f"step{i}/x_adv"
    chained = onnx.helper.make_graph(nodes, graph.name, list(graph.input), list(graph.output),
                                     list(graph.initializer))
    model = onnx.helper.make_model(chained, opset_imports=list(step.opset_import), ir_version=step.ir_version,
                                   producer_name=step.producer_name, producer_version=step.producer_version)
    onnx.checker.check_model(model)
    return model


def trace(fn, example_args: tuple) -> torch.fx.GraphModule:
    """Trace `fn` to an ATen graph with every backward op decomposed; a clear error otherwise."""
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(fn, decomposition_table=decompositions(), tracing_mode="symbolic",
                 _allow_non_fake_inputs=True)(*example_args)
    leftover = sorted(
        {str(n.target) for n in gm.graph.nodes if n.op == "call_function" and "backward" in str(n.target)}
    )
    if leftover:
        raise PudrtError(f"the gradient graph still contains backward ops pudrt cannot export: {leftover}")
    return gm


def export_grad_graph(model: nn.Module, path: str | os.PathLike, example: torch.Tensor, kind: str = "ce",
                      steps: int = 7, opset: int = 18, dense: bool = True) -> Path:
    """Export the `kind` gradient graph of `model` ("ce", "kl" or "pgd" with `steps` unrolled steps).

    `dense=False` keeps every convolution as exported instead of rewriting those on tiny maps.
    """
    if kind not in GRAPHS:
        raise PudrtError(f"unknown gradient graph {kind!r}; choose one of {', '.join(GRAPHS)}")
    pair = _frozen(model)
    x = example.detach().cpu().float()
    if len(x) < 2:
        x = torch.cat([x, x])
    y = torch.zeros(len(x), dtype=torch.long)
    if kind == "ce":
        fn, args, names, outputs = ce_grad_fn(pair), (x, y), ["input", "label"], ["grad"]
    elif kind == "kl":
        fn, args, names, outputs = kl_grad_fn(pair), (x, torch.zeros_like(x)), ["input", "delta"], ["grad"]
    else:
        if steps < 0:
            raise PudrtError(f"a PGD graph needs steps >= 0, got {steps}")
        eps, alpha = torch.tensor(6 / 255), torch.tensor(1.2 / 255)
        fn, args = pgd_fn(pair, steps), (x, y, x.clone(), eps, alpha)
        names, outputs = ["input", "label", "start", "eps", "alpha"], ["x_adv", "logits"]
    if isinstance(pair, torch.jit.ScriptModule):
        raise PudrtError("gradient graphs are traced through torch.func, which cannot run TorchScript; export the "
                         "gradient graph from the state dict or .pt2 file of this model")
    path = Path(path)
    with atomic_path(path) as tmp:
        if kind == "pgd" and steps > 1:
            _export_pgd(pair, steps, args, names, outputs, opset, tmp, dense)
        else:
            _export_traced(fn, args, names, outputs, kind, opset, tmp, dense)
    return path


def _export_pgd(pair: nn.Module, steps: int, args: tuple, names: list[str], outputs: list[str], opset: int,
                dst: Path, dense: bool) -> None:
    """Export one PGD step and chain `steps` copies of it (`chain_steps`); all of them unrolled where it cannot."""
    import onnx

    _export_traced(pgd_fn(pair, 1), args, names, outputs, "pgd", opset, dst, dense)
    chained = chain_steps(onnx.load(str(dst)), steps)
    if chained is None:
        log.info("the one-step PGD graph holds subgraphs or functions; exporting all %d steps unrolled", steps)
        _export_traced(pgd_fn(pair, steps), args, names, outputs, "pgd", opset, dst, dense)
    else:
        onnx.save(chained, str(dst))


def _export_traced(fn, args: tuple, names: list[str], outputs: list[str], kind: str, opset: int, dst: Path,
                   dense: bool) -> None:
    """Trace `fn` on `args` and export it to `dst` with a dynamic batch; tiny convolutions made dense."""
    gm = trace(fn, args).eval()  # a flat ATen graph: eval() changes nothing but torch.onnx's training-mode warning
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} if a.dim() > 0 else None for a in args)
    try:
        program = torch.onnx.export(gm, args, dynamo=True, input_names=names, output_names=outputs,
                                    dynamic_shapes=dynamic, opset_version=opset, optimize=True,
                                    external_data=False, verbose=False)
    except Exception as err:  # noqa: BLE001
        raise PudrtError(f"exporting the {kind} gradient graph failed ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:300]})") from err
    program.save(str(dst))
    if dense:
        densify(dst)


@dataclass(frozen=True)
class GradAgreement:
    """How well an engine's gradient graph reproduces autograd, sample by sample.

    Errors are per-sample relative (max |Δ| / max |reference|) against a float64
    autograd reference. `within_rtol` is the plain fraction within `rtol`.
    `within_noise` also accepts a sample whose error is at most 3× the float32
    noise of torch's own autograd on it (floored at the batch median): where the
    gradient nearly cancels (KL at small δ is J^T(q − p) with q ≈ p), float32
    cannot reach `rtol` in either engine, and the check must say so rather than
    blame the export. The check passes when `within_noise` ≥ `min_fraction`.
    """

    kind: str
    samples: int
    within_rtol: float
    within_noise: float
    worst_relative: float
    torch_median_relative: float
    rtol: float
    min_fraction: float
    adv_acc_engine: float | None = None
    adv_acc_torch: float | None = None

    @property
    def passed(self) -> bool:
        ok = self.within_noise >= self.min_fraction
        if self.adv_acc_engine is not None:
            ok &= abs(self.adv_acc_engine - self.adv_acc_torch) <= 0.01
        return ok

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        if self.adv_acc_engine is not None:
            return (f"{verdict}: pgd graph vs torch PGD on {self.samples} images: adversarial accuracy engine "
                    f"{100 * self.adv_acc_engine:.2f}% vs torch {100 * self.adv_acc_torch:.2f}% (must agree within "
                    f"1 point); {100 * self.within_rtol:.1f}% of adversarial images identical to 1e-5 (a tie at a "
                    f"ReLU/max-pool kink flips one sign and then a whole step)")
        return (f"{verdict}: {self.kind} graph vs float64 autograd on {self.samples} images: "
                f"{100 * self.within_rtol:.1f}% of samples within {self.rtol:g} relative, "
                f"{100 * self.within_noise:.1f}% within {self.rtol:g} or torch float32's own noise "
                f"(need ≥ {100 * self.min_fraction:.0f}%); worst sample {self.worst_relative:.2e}, torch float32 "
                f"median {self.torch_median_relative:.2e}")


def _per_sample_relative(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    n = len(ref)
    diff = np.abs(got - ref).reshape(n, -1).max(1)
    scale = np.abs(ref).reshape(n, -1).max(1)
    return diff / np.maximum(scale, 1e-12)


def _autograd(pair: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, kind: str) -> np.ndarray:
    if kind == "ce":
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(pair(xr)[0], y, reduction="sum"), xr)
    else:
        dr = delta.clone().requires_grad_(True)
        with torch.no_grad():
            p_log = F.log_softmax(pair(x)[0], dim=1)
        loss = F.kl_div(F.log_softmax(pair(x + dr)[0], dim=1), p_log, reduction="sum", log_target=True)
        (g,) = torch.autograd.grad(loss, dr)
    return g.double().numpy()


def verify_grad_graph(path: str | os.PathLike, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      kind: str, steps: int = 7, eps: float = 6 / 255, rtol: float = 1e-4,
                      min_fraction: float = 0.99) -> GradAgreement:
    """Compare the exported `kind` graph with torch autograd on real images."""
    from pudrt.attacks.pgd import PGD
    from pudrt.engine.runners import OrtRunner

    pair = _frozen(model)
    x = images.detach().float()
    y = labels.detach().long()
    with OrtRunner(path, device="cpu") as runner:
        if kind in ("ce", "kl"):
            g = torch.Generator().manual_seed(0)
            # KL is checked at a perturbation large enough that its gradient does not cancel to float32 noise
            delta = (torch.rand(x.shape, generator=g) * 2 - 1) * max(eps, 0.1)
            feed = {"label": y.numpy()} if kind == "ce" else {"delta": delta.numpy()}
            got = runner(x, **feed)["grad"]
            ref32 = _autograd(pair, x, y, delta, kind)
            ref64 = _autograd(copy.deepcopy(pair).double(), x.double(), y, delta.double(), kind)
            err_engine = _per_sample_relative(got, ref64)
            err_torch = _per_sample_relative(ref32, ref64)
            noise = np.maximum(err_torch, np.median(err_torch))
            return GradAgreement(kind, len(x), float((err_engine <= rtol).mean()),
                                 float((err_engine <= np.maximum(rtol, 3 * noise)).mean()), float(err_engine.max()),
                                 float(np.median(err_torch)), rtol, min_fraction)
        alpha = eps / 5
        out = runner(x, label=y.numpy(), start=x.numpy(), eps=np.float32(eps), alpha=np.float32(alpha))
        x_ref = PGD(pair, eps=eps, alpha=alpha, steps=steps)(x, y)
        with torch.no_grad():
            acc_torch = float((pair(x_ref)[0].argmax(1) == y).float().mean())
        acc_engine = float((out["logits"].argmax(1) == y.numpy()).mean())
        # a sign flip at one tie changes a whole step, so compare the images by sample, loosely
        diff = np.abs(out["x_adv"] - x_ref.numpy()).reshape(len(x), -1).max(1)
        same = float((diff <= 1e-5).mean())
        return GradAgreement(kind, len(x), same, 1.0, float(diff.max()), 0.0, 1e-5, 0.0, acc_engine, acc_torch)
