import pytest
import torch
import torch.nn as nn

from pudrt.errors import PudrtError
from pudrt.io.models import load_model, save_model
from pudrt.models import CIFAR10_MEAN, CIFAR10_STD, Normalized, create_model


@pytest.fixture
def trained_like():
    torch.manual_seed(0)
    m = Normalized(create_model("resnet8", 10), CIFAR10_MEAN, CIFAR10_STD).eval()
    for mod in m.modules():  # non-trivial BN statistics, so a lost buffer would show
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".ts", ".pt2"])
def test_model_formats_round_trip(tmp_path, trained_like, images, suffix):
    path = save_model(trained_like, tmp_path / f"m{suffix}", "resnet8", 10)
    loaded = load_model(path)
    with torch.no_grad():
        want = trained_like(images)
        got_logits, got_features = loaded.features()(images)
        assert torch.allclose(loaded.net(images), want, atol=1e-5)
    assert torch.allclose(got_logits, want, atol=1e-5)
    assert got_features.shape == (len(images), 64)
    assert loaded.info.num_classes == 10


def test_packaged_models_refuse_a_second_normalisation(tmp_path, trained_like):
    path = save_model(trained_like, tmp_path / "m.pt2", "resnet8", 10)
    with pytest.raises(PudrtError, match="drop --mean/--std"):
        load_model(path, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def test_state_dict_loads_with_plain_torch_and_weights_only(tmp_path, trained_like):
    save_model(trained_like, tmp_path / "m.pt", "resnet8", 10)
    obj = torch.load(tmp_path / "m.pt", weights_only=True)
    assert obj["pudrt"]["arch"] == "resnet8" and obj["pudrt"]["mean"] == pytest.approx(list(CIFAR10_MEAN))
    bare = create_model("resnet8", 10)
    bare.load_state_dict(obj["state_dict"])


def test_bare_state_dict_needs_arch_and_infers_classes(tmp_path, images):
    m = create_model("resnet8", 7).eval()
    torch.save({"module." + k: v for k, v in m.state_dict().items()}, tmp_path / "bare.pth")
    with pytest.raises(PudrtError, match="--arch"):
        load_model(tmp_path / "bare.pth")
    loaded = load_model(tmp_path / "bare.pth", arch="resnet8")
    assert loaded.info.num_classes == 7
    with torch.no_grad():
        assert torch.allclose(loaded.net(images), m(images), atol=1e-6)
    normalised = load_model(tmp_path / "bare.pth", arch="resnet8", mean=CIFAR10_MEAN, std=CIFAR10_STD)
    assert isinstance(normalised.net, Normalized)


def test_state_dict_of_another_arch_is_explained(tmp_path):
    torch.save(create_model("resnet8", 10).state_dict(), tmp_path / "m.pt")
    with pytest.raises(PudrtError, match="does not fit --arch preactresnet18"):
        load_model(tmp_path / "m.pt", arch="preactresnet18", num_classes=10)


def test_pickled_module_is_refused_unless_the_user_opts_in(tmp_path, images):
    m = create_model("resnet8", 10).eval()
    torch.save(m, tmp_path / "full.pt")
    with pytest.raises(PudrtError, match="--unsafe-pickle") as err:
        load_model(tmp_path / "full.pt")
    assert "runs whatever code" in str(err.value)
    loaded = load_model(tmp_path / "full.pt", unsafe_pickle=True)
    with torch.no_grad():
        assert torch.allclose(loaded.net(images), m(images))


def test_pickle_that_would_run_code_is_never_executed(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": Exploit()}, f)
    with pytest.raises(PudrtError, match="pickled Python object"):
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()


def test_unknown_arch_lists_the_choices(tmp_path):
    torch.save(create_model("resnet8", 10).state_dict(), tmp_path / "m.pt")
    with pytest.raises(PudrtError, match="unknown architecture 'resnet9000'.*resnet8"):
        load_model(tmp_path / "m.pt", arch="resnet9000")


@pytest.mark.parametrize("content, message", [(b"", "not a readable"), (b"\x80\x04garbage", "not a readable")])
def test_garbage_model_files_are_clear_errors(tmp_path, content, message):
    (tmp_path / "m.pt").write_bytes(content)
    with pytest.raises(PudrtError, match=message):
        load_model(tmp_path / "m.pt")


def test_onnx_is_for_runners_only(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(PudrtError, match="runner"):
        load_model(tmp_path / "m.onnx")


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, trained_like):
    path = save_model(trained_like, tmp_path / "m.pt", "resnet8", 10)
    before = path.read_bytes()
    with pytest.raises(PudrtError):
        save_model(trained_like, tmp_path / "m.xyz", "resnet8", 10)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_saved_files_get_the_umasks_permissions_not_the_temporary_files(tmp_path, trained_like):
    import os

    umask = os.umask(0o022)
    try:
        path = save_model(trained_like, tmp_path / "m.pt", "resnet8", 10)
        assert path.stat().st_mode & 0o777 == 0o644  # readable by the serving user, as `open` would make it
        path.chmod(0o600)
        save_model(trained_like, path, "resnet8", 10)  # a replaced file keeps the permissions it had
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)


def test_models_are_built_and_loaded_channels_last_and_saved_contiguous(tmp_path):
    def convs(m):
        return [p for p in m.parameters() if p.dim() == 4]

    model = create_model("resnet8", 10)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs(model))
    save_model(model, tmp_path / "m.pt", "resnet8", 10)
    saved = torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"]
    assert all(t.is_contiguous() for t in saved.values())  # readable by any loader, layout-free
    loaded = load_model(tmp_path / "m.pt").net
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs(loaded))
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
