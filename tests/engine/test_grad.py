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


@pytest.mark.parametrize("arch", ["resnet8", "resnet18"])  # resnet18 has a max-pool: its backward is traced too
@pytest.mark.parametrize("kind", ["ce", "kl"])
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
