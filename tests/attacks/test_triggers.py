import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pudrt.attacks import SIG, BadNets, Blend, WaNet, create_attack, load_trigger
from pudrt.attacks.poison import poison_dataset
from pudrt.errors import PudrtError
from pudrt.io import iter_batches, open_dataset


def test_badnets_changes_exactly_the_bottom_right_3x3(images):
    out = BadNets().apply(images)
    mask = torch.zeros_like(images, dtype=torch.bool)
    mask[..., -3:, -3:] = True
    assert torch.equal(out[~mask], images[~mask])
    assert torch.all(out[mask] == 1.0)


def test_blend_stays_within_alpha_and_is_reproducible(images):
    a = Blend(alpha=0.2, seed=3)
    out = a.apply(images)
    assert (out - images).abs().max() <= 0.2 + 1e-6
    assert (out - images).abs().mean() > 0.02
    assert torch.equal(out, Blend(alpha=0.2, seed=3).apply(images))
    assert not torch.equal(out, Blend(alpha=0.2, seed=4).apply(images))
    assert out.min() >= 0 and out.max() <= 1


def test_blend_takes_a_pattern_image(tmp_path, images):
    from PIL import Image

    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "p.png")
    out = Blend(pattern=str(tmp_path / "p.png")).apply(images)
    assert torch.allclose(out, 0.8 * images, atol=1e-6)


def test_sig_stays_within_delta(images):
    a = SIG()
    out = a.apply(images)
    assert (out - images).abs().max() <= 40 / 255 + 1e-6
    # unclipped pixels carry exactly the documented sinusoid
    inside = (images > 40 / 255) & (images < 1 - 40 / 255)
    expected = images + a.signal(images.shape[-1])
    assert torch.allclose(out[inside], expected[inside], atol=1e-6)


def test_wanet_moves_each_pixel_within_its_documented_bound(images):
    a = WaNet()
    h, w = images.shape[-2:]
    r = a.max_displacement_px(h, w)
    assert 0.05 < r < 1.5  # s = 0.5: a sub-pixel to one-pixel warp, by design hard to see
    out = a.apply(images)
    assert (out - images).abs().max() > 0.05
    k = int(np.ceil(r))
    hi = F.max_pool2d(images, 2 * k + 1, stride=1, padding=k)
    lo = -F.max_pool2d(-images, 2 * k + 1, stride=1, padding=k)
    assert torch.all(out <= hi + 1e-5) and torch.all(out >= lo - 1e-5)
    assert torch.equal(out, WaNet().apply(images))  # the warp is fixed by the seed


def test_attack_parameters_are_validated():
    with pytest.raises(PudrtError, match="ratio"):
        create_attack("badnets", ratio=1.5)
    with pytest.raises(PudrtError, match="unknown attack"):
        create_attack("trojannn")
    with pytest.raises(PudrtError, match="no parameter"):
        create_attack("blend", size=3)
    with pytest.raises(PudrtError, match="clean-label"):
        create_attack("sig", all_to_all=True)


def _by_source(ds):
    """Source index -> (uint8 HWC image, label), read back from a dataset written by pudrt poison."""
    out = {}
    for b in iter_batches(ds, 256):
        for img, y, i in zip(b.x, b.y, b.index, strict=True):
            name = ds.ids[int(i)].rsplit("/", 1)[-1]
            out[int(name.split(".")[0])] = (img.numpy().transpose(1, 2, 0), int(y))
    return out


@pytest.mark.parametrize("attack", ["badnets", "blend", "sig", "wanet"])
def test_poison_indices_match_the_changed_samples(tmp_path, test_data, attack):
    spec = create_attack(attack)
    result = poison_dataset(test_data, spec, tmp_path / "p", "imagefolder")
    written = open_dataset(tmp_path / "p")
    got = _by_source(written)
    assert len(got) == len(test_data)
    changed, relabelled = set(), set()
    for b in iter_batches(test_data, 256):
        for img, y, i in zip(b.x, b.y, b.index, strict=True):
            new_img, new_y = got[int(i)]
            if not np.array_equal(new_img, img.numpy().transpose(1, 2, 0)):
                changed.add(int(i))
            if new_y != int(y):
                relabelled.add(int(i))
    poison = set(result.poison_indices.tolist())
    cross = set(result.cross_indices.tolist())
    assert changed == poison | cross
    assert len(poison) == (200 if attack == "sig" else round(0.1 * len(test_data)))
    labels = test_data.labels
    if attack == "sig":  # clean-label: only target-class samples, labels untouched
        assert relabelled == set() and all(labels[i] == spec.target for i in poison)
    else:  # all-to-one: non-target samples relabelled to the target
        assert relabelled == poison and all(labels[i] != spec.target for i in poison)
    assert written.poison_indices is not None and len(written.poison_indices) == len(poison)
    assert all(written.labels[i] == spec.target for i in written.poison_indices)
    if attack == "wanet":
        assert len(cross) == 2 * len(poison) and not cross & poison


def test_badnets_written_png_keeps_the_exact_trigger(tmp_path, test_data):
    result = poison_dataset(test_data, BadNets(ratio=0.05), tmp_path / "p", "npz")
    ds = open_dataset(tmp_path / "p")
    for i in ds.poison_indices[:20]:
        img = ds.load_image(int(i))
        assert (img[-3:, -3:] == 255).all()
    assert load_trigger(str(tmp_path / "p")) == BadNets(ratio=0.05)
    assert result.written == len(test_data)


def test_all_to_all_relabels_to_the_next_class(test_data):
    a = BadNets(all_to_all=True)
    idx = a.select(test_data.labels, 10)
    assert len(idx) == 200
    y = torch.tensor([0, 5, 9])
    assert a.poison_label(y, 10).tolist() == [1, 6, 0]
