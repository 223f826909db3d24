import numpy as np
import pytest
import torch

from pudrt.attacks.pgd import PGD
from pudrt.engine.grad import export_grad_graph, verify_grad_graph
from pudrt.errors import PudrtError


@pytest.fixture(scope="module")
def batch(test_data):
    from pudrt.io import iter_batches

    b = next(iter_batches(test_data, 64, workers=0))
    return b.float(), b.y


# resnet18 has a max-pool: its backward is traced too. Its KL graph differs from its CE graph only in the loss, which
# resnet8 covers; leaving it out saves 30-40 s of export.
@pytest.mark.parametrize("kind, arch", [("ce", "resnet8"), ("kl", "resnet8"), ("ce", "resnet18")])
def test_gradient_graph_agrees_with_autograd(random_model, tmp_path, arch, kind, batch):
    x, y = batch
    model = random_model(arch)
    path = export_grad_graph(model, tmp_path / f"{kind}.onnx", x[:4], kind)
    result = verify_grad_graph(path, model, x, y, kind)
    assert result.passed, result.describe()
    if kind == "ce":  # well conditioned: the plain 1e-4 criterion holds on ≥ 99% of samples
        assert result.within_rtol >= 0.99, result.describe()


@pytest.fixture(scope="module")
def pgd_graph(tmp_path_factory, trained_resnet8, batch):
    """The 7-step PGD graph of the trained resnet8 (its export is the slow part: each step's backward is traced)."""
    return export_grad_graph(trained_resnet8, tmp_path_factory.mktemp("pgd") / "pgd.onnx", batch[0][:4], "pgd",
                             steps=7)


def test_pgd_graph_matches_torch_pgd(pgd_graph, trained_resnet8, batch):
    x, y = batch
    result = verify_grad_graph(pgd_graph, trained_resnet8, x, y, "pgd", steps=7)
    assert result.passed, result.describe()
    with torch.no_grad():
        clean = float((trained_resnet8(x).argmax(1) == y).float().mean())
    assert result.adv_acc_torch < clean - 0.2  # the attack works: accuracy falls well below clean


def test_pgd_graph_respects_the_budget(pgd_graph, batch):
    from pudrt.engine import OrtRunner

    x, y = batch
    eps = 8 / 255  # ε and the step size are inputs of the graph, not baked into it
    with OrtRunner(pgd_graph, device="cpu") as runner:
        out = runner(x, label=y.numpy(), start=x.numpy(), eps=np.float32(eps), alpha=np.float32(2 / 255))
    delta = out["x_adv"] - x.numpy()
    assert np.abs(delta).max() <= eps + 1e-6
    assert out["x_adv"].min() >= 0 and out["x_adv"].max() <= 1
    assert np.abs(delta).max() > eps / 2


def test_torch_pgd_lowers_accuracy_and_stays_in_the_ball(trained_resnet8, batch):
    x, y = batch
    x_adv = PGD(trained_resnet8, eps=8 / 255, steps=7, random_start=True,
                generator=torch.Generator().manual_seed(0))(x, y)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():
        adv_acc = (trained_resnet8(x_adv).argmax(1) == y).float().mean()
        clean_acc = (trained_resnet8(x).argmax(1) == y).float().mean()
    assert adv_acc < clean_acc


def test_unknown_graph_kind_is_explained(random_model, tmp_path, batch):
    with pytest.raises(PudrtError, match="unknown gradient graph"):
        export_grad_graph(random_model("resnet8"), tmp_path / "g.onnx", batch[0][:2], "hessian")


def test_pgd_steps_are_chained_copies_of_one_step_sharing_the_weights(tmp_path):
    # a stand-in step: x_adv = min(start + alpha·w, input + eps), logits = Σ x_adv·w + label; 3 steps from 0 with
    # w = 2, alpha = 0.5 reach x_adv = 3 and logits = 3 · (3 · 2)
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pudrt.engine import OrtRunner
    from pudrt.engine.grad import chain_steps

    w = numpy_helper.from_array(np.full((1, 3, 1, 1), 2.0, np.float32), "w")
    nodes = [helper.make_node("Mul", ["alpha", "w"], ["step"]),
             helper.make_node("Add", ["start", "step"], ["moved"]),
             helper.make_node("Add", ["input", "eps"], ["upper"]),
             helper.make_node("Min", ["moved", "upper"], ["x_adv"]),
             helper.make_node("Mul", ["x_adv", "w"], ["scaled"]),
             helper.make_node("ReduceSum", ["scaled"], ["summed"], keepdims=0, axes=[1, 2, 3]),
             helper.make_node("Add", ["summed", "label"], ["logits"])]
    image = ["b", 3, 1, 1]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
          (("input", image), ("label", ["b"]), ("start", image), ("eps", []), ("alpha", []))]
    out = [helper.make_tensor_value_info("x_adv", TensorProto.FLOAT, image),
           helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b"])]
    step = helper.make_model(helper.make_graph(nodes, "step", io, out, [w]),
                             opset_imports=[helper.make_opsetid("", 11)])
    chained = chain_steps(step, 3)
    assert len(chained.graph.initializer) == 1  # the weights are shared, not copied per step
    assert sum(n.op_type == "ReduceSum" for n in chained.graph.node) == 1  # only the last step computes logits
    # alpha·w and input + eps change in no step: computed once; the step's own Add and Min once per step
    ops = [n.op_type for n in chained.graph.node]
    assert ops.count("Mul") == 2 and ops.count("Min") == 3 and ops.count("Add") == 3 + 1 + 1, ops
    onnx.save(chained, tmp_path / "c.onnx")
    zeros = np.zeros((2, 3, 1, 1), np.float32)
    with OrtRunner(tmp_path / "c.onnx", device="cpu") as runner:
        got = runner(zeros, label=np.zeros(2, np.float32), start=zeros, eps=np.float32(10), alpha=np.float32(0.5))
        np.testing.assert_allclose(got["x_adv"], np.full((2, 3, 1, 1), 3.0))
        np.testing.assert_allclose(got["logits"], np.full(2, 18.0))
        # the projection of every step is there: with eps 1 the steps stop at input + 1
        assert runner(zeros, label=np.zeros(2, np.float32), start=zeros, eps=np.float32(1),
                      alpha=np.float32(0.5))["x_adv"].max() == 1.0
