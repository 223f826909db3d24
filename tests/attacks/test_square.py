import pytest
import torch

from pudrt.attacks.square import Square, margin_loss, window_share
from pudrt.errors import PudrtError
from pudrt.io import iter_batches


def test_the_window_shrinks_on_the_papers_schedule_rescaled_to_the_budget():
    assert window_share(0.05, 1, 10_000) == 0.05 and window_share(0.05, 11, 10_000) == 0.025
    assert window_share(0.05, 10_000, 10_000) == pytest.approx(0.05 / 512)
    assert window_share(0.05, 100, 1_000) == window_share(0.05, 1_000, 10_000) == 0.05 / 16
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    assert margin_loss(logits, torch.tensor([0, 0])).tolist() == [1.0, -5.0]
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 20 * 8, 4))
    x, y = torch.rand(16, 3, 20, 8), torch.randint(0, 4, (16,))  # a tall image: the window fits its width
    y = linear(x).argmax(1)  # all correct to start with, so the first (largest) windows are drawn
    x_adv = Square(linear, eps=0.001, queries=2000)(x, y)
    assert (x_adv - x).abs().max() <= 0.001 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1


def test_square_fools_a_trained_model_from_logits_alone_on_torch_and_on_its_engine(clean_model, test_data, tmp_path):
    from pudrt.engine import OrtRunner, export_onnx

    batch = next(iter_batches(test_data, 96, workers=0))
    x, y = batch.float(), batch.y
    path = export_onnx(clean_model, tmp_path / "m.onnx", x[:4])
    accuracy = {}
    with OrtRunner(path, device="cpu") as runner:
        for name, logits in (("torch", clean_model.eval()), ("onnx", lambda t: torch.from_numpy(runner(t)["logits"]))):
            attack = Square(logits, eps=8 / 255, queries=200, seed=0)
            x_adv = attack(x, y)
            assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
            with torch.no_grad():
                clean, adv = (logits(t).argmax(1) == y for t in (x, x_adv))
            assert not (adv & ~clean).any()  # it never turns a wrong prediction right
            assert (attack.used[~clean] == 1).all() and attack.used.max() <= 200  # the budget holds
            accuracy[name] = (float(clean.float().mean()), float(adv.float().mean()))
    for clean_acc, adv_acc in accuracy.values():
        assert clean_acc > 0.4 and adv_acc < clean_acc - 0.2, accuracy
    # the engine and torch give the same logits to float noise, so the attack fares the same on both
    assert abs(accuracy["torch"][1] - accuracy["onnx"][1]) <= 0.05, accuracy
    with pytest.raises(PudrtError, match="ε must lie in"):
        Square(clean_model, eps=0)
    with pytest.raises(PudrtError, match="at least 1 query"):
        Square(clean_model, queries=0)
