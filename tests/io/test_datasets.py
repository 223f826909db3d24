import io
import json
import logging
import tarfile

import numpy as np
import pytest
from PIL import Image

from pudrt.errors import PudrtError
from pudrt.io import SkipCounter, iter_batches, open_dataset, resolve_data
from pudrt.io.datasets import DecodedImages, NpzDataset
from pudrt.io.writers import DatasetWriter


def _random_images(n, h=8, w=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), rng.integers(0, 3, n)


def _read_all(ds):
    skips = SkipCounter(ds)
    xs, ys, idx = [], [], []
    for b in iter_batches(ds, 7, skips=skips):
        xs.append(b.x.numpy().transpose(0, 2, 3, 1))
        ys.append(b.y.numpy())
        idx.append(b.index.numpy())
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(idx), skips


@pytest.mark.parametrize("fmt", ["imagefolder", "npz", "tar"])
def test_each_format_round_trips_pixels_labels_and_ids(tmp_path, fmt):
    x, y = _random_images(23)
    with DatasetWriter(tmp_path / "out", fmt, ["a", "b", "c"], expected=len(x)) as w:
        w.add(x, y, np.arange(len(x)))
        id_of = w.id_of
    ds = open_dataset(tmp_path / "out")
    assert len(ds) == 23 and ds.classes == ["a", "b", "c"]
    got_x, got_y, got_i, skips = _read_all(ds)
    assert len(skips) == 0
    by_id = {ds.ids[i]: (got_x[k], got_y[k]) for k, i in enumerate(got_i)}
    for src in range(len(x)):
        px, label = by_id[id_of[src]]
        np.testing.assert_array_equal(px, x[src])  # lossless
        assert label == y[src]


def test_embedded_subset_is_balanced_real_cifar10(train_data, test_data):
    assert len(train_data) == 10_000 and len(test_data) == 2_000
    assert np.bincount(train_data.labels).tolist() == [1000] * 10
    assert np.bincount(test_data.labels).tolist() == [200] * 10
    assert train_data.classes[0] == "airplane" and train_data.ids[0].startswith("train/airplane/")
    img = train_data.load_image(0)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and img.std() > 10


def test_npz_uncompressed_arrays_are_memory_mapped(tmp_path):
    x, y = _random_images(5)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = NpzDataset(tmp_path / "d.npz")
    assert isinstance(ds._x, np.memmap)
    np.testing.assert_array_equal(ds.load_image(3), x[3])


def test_resolve_data_unpacks_a_checked_archive_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PUDRT_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src" / "toy"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (src / split / c).mkdir(parents=True)
            Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(src / split / c / "0.png")
    archive_dir = tmp_path / "shared"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / "toy.tar.gz", "w:gz") as tf:
        tf.add(src, arcname="toy")
    ds = resolve_data(archive_dir, "test")
    assert len(ds) == 2 and ds.classes == ["a", "b"]
    import hashlib

    (archive_dir / "SHA256SUMS").write_text(f"{'0' * 64}  toy.tar.gz\n")
    with pytest.raises(PudrtError, match="does not match its checksum"):
        resolve_data(archive_dir, "train")
    digest = hashlib.sha256((archive_dir / "toy.tar.gz").read_bytes()).hexdigest()
    (archive_dir / "SHA256SUMS").write_text(f"{digest}  toy.tar.gz\n")
    assert len(resolve_data(archive_dir, "train")) == 2


# -- bad input ---------------------------------------------------------------------


def _folder(tmp_path, n_per_class=3):
    root = tmp_path / "folder"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(root / c / f"{i}.png")
    return root


def test_corrupt_and_truncated_images_are_reported_skipped_and_counted(tmp_path, caplog):
    root = _folder(tmp_path)
    (root / "cat" / "bad.png").write_bytes(b"this is not a png")
    good = (root / "dog" / "0.png").read_bytes()
    (root / "dog" / "cut.png").write_bytes(good[: len(good) // 2])
    ds = open_dataset(root)
    assert len(ds) == 8
    with caplog.at_level(logging.WARNING):
        x, y, idx, skips = _read_all(ds)
    assert len(x) == 6 and len(skips) == 2
    assert {s.id for s in skips.skipped} == {"cat/bad.png", "dog/cut.png"}
    assert "cat/bad.png" in caplog.text and "dog/cut.png" in caplog.text


def test_non_image_file_in_a_class_folder_is_skipped_with_a_warning(tmp_path, caplog):
    root = _folder(tmp_path)
    (root / "cat" / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING):
        ds = open_dataset(root)
    assert len(ds) == 6 and "cat/notes.txt" in caplog.text
    assert "cat/notes.txt" in ds.skipped_files


def test_empty_class_folder_is_a_clear_error(tmp_path):
    root = _folder(tmp_path)
    (root / "eel").mkdir()
    with pytest.raises(PudrtError, match="eel holds no images"):
        open_dataset(root)


def test_folder_without_classes_is_a_clear_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(PudrtError, match="no class folders"):
        open_dataset(tmp_path)


def _shard(path, n, label=lambda i: i % 2):
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(buf, format="PNG")
            for name, data in ((f"{i:04d}.png", buf.getvalue()), (f"{i:04d}.cls", str(label(i)).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_truncated_tar_shard_keeps_complete_samples_with_a_warning(tmp_path, caplog):
    _shard(tmp_path / "a.tar", 20)
    data = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "a.tar").write_bytes(data[: len(data) // 2 + 100])
    with caplog.at_level(logging.WARNING):
        ds = open_dataset(tmp_path)
    assert 5 <= len(ds) < 20
    assert "truncated" in caplog.text
    x, y, idx, skips = _read_all(ds)
    assert len(x) == len(ds) and len(skips) == 0
    assert [int(v) for v in x[:, 0, 0, 0]] == list(range(len(ds)))


def test_tar_labels_out_of_range_are_a_clear_error(tmp_path):
    _shard(tmp_path / "a.tar", 4, label=lambda i: -1 if i == 2 else 0)
    with pytest.raises(PudrtError, match="out of range"):
        open_dataset(tmp_path)


def test_tar_label_beyond_class_list_is_a_clear_error(tmp_path):
    _shard(tmp_path / "a.tar", 4, label=lambda i: i)
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(PudrtError, match="out of range 0..1"):
        open_dataset(tmp_path)


def test_compressed_shard_is_explained(tmp_path):
    (tmp_path / "a.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(PudrtError, match="decompress"):
        open_dataset(tmp_path / "a.tar.gz")


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(4, np.int64)}, r"shape \(N, H, W, 3\)"),
        ({"x": np.zeros((4, 8, 8, 3), np.float32), "y": np.zeros(4, np.int64)}, "must be uint8"),
        ({"x": np.zeros((4, 8, 8, 3), np.uint8), "y": np.zeros(5, np.int64)}, r"N = len\(y\) = 5"),
        ({"x": np.zeros((4, 8, 8, 3), np.uint8), "y": np.zeros((4, 2), np.int64)}, "1-D integer"),
        ({"x": np.zeros((4, 8, 8, 3), np.uint8)}, "no `y` array"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8), "y": np.zeros(4, np.int64)}, "neither `x`"),
        ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.array([0, 3]), "classes": np.array(["a", "b"])},
         "out of range"),
        ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.array([0, -1])}, "out of range"),
    ],
)
def test_npz_with_wrong_shapes_or_labels_is_a_clear_error(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(PudrtError, match=message):
        open_dataset(tmp_path / "d.npz")


def test_npz_with_pickled_objects_is_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((1, 2, 2, 3), np.uint8), y=np.array([object()], dtype=object))
    with pytest.raises(PudrtError, match="Python objects"):
        open_dataset(tmp_path / "d.npz")


def test_not_a_zip_npz_is_a_clear_error(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"garbage")
    with pytest.raises(PudrtError, match="not a readable .npz"):
        open_dataset(tmp_path / "d.npz")


def test_dataset_root_with_splits_asks_which(tmp_path):
    for s in ("train", "test"):
        _folder(tmp_path / s)
    with pytest.raises(PudrtError, match="say which one"):
        open_dataset(tmp_path)
    assert len(open_dataset(tmp_path, split="test")) == 6


def test_decoded_images_read_the_same_batches_once_decoded_and_skip_the_bad_once(tmp_path, caplog):
    root = _folder(tmp_path)
    (root / "cat" / "bad.png").write_bytes(b"this is not a png")
    (root / "poison.json").write_text(json.dumps({"poison_ids": ["dog/1.png", "cat/0.png"]}))
    ds = open_dataset(root)
    with caplog.at_level(logging.WARNING):
        decoded = DecodedImages(ds)
    assert decoded.skipped == 1 and "cat/bad.png" in caplog.text  # reported once, when decoded
    assert decoded.decoded and not ds.decoded and decoded.subset([0, 1]).decoded
    x, y, idx, skips = _read_all(ds)
    dx, dy, didx, dskips = _read_all(decoded)
    np.testing.assert_array_equal(dx, x)
    np.testing.assert_array_equal(dy, y)
    assert len(dskips) == 0 and decoded.index.tolist() == idx.tolist()
    assert decoded.ids == [ds.ids[i] for i in idx] and decoded.classes == ds.classes
    assert [decoded.ids[i] for i in decoded.poison_indices] == ["cat/0.png", "dog/1.png"]
    (root / "dog" / "0.png").unlink()  # nothing is read from the source again
    assert len(_read_all(decoded)[0]) == 6


def test_poison_file_maps_ids_to_indices(tmp_path):
    root = _folder(tmp_path)
    (root / "poison.json").write_text(json.dumps({"poison_ids": ["dog/1.png", "cat/0.png"]}))
    ds = open_dataset(root)
    assert ds.poison_indices.tolist() == [0, 4]


def test_per_class_takes_a_stratified_subset_and_keeps_the_poisons(tmp_path, train_data):
    from pudrt.attacks import BadNets
    from pudrt.attacks.poison import poison_dataset
    from pudrt.io import open_dataset

    poison_dataset(train_data, BadNets(), tmp_path / "p", "npz")
    poisoned = open_dataset(tmp_path / "p")
    part = poisoned.per_class(100)
    assert np.bincount(part.labels).tolist() == [100] * 10
    assert part.ids == sorted(part.ids, key=poisoned.ids.index)  # original order kept
    assert part.per_class(100).ids == part.ids and poisoned.per_class(100, seed=1).ids != part.ids
    # BadNets' 1,000 poisons are labelled airplane: half of class 0's 2,000 rows, so about 50 of the 100 picked
    assert 35 <= len(part.poison_indices) <= 65 and set(part.labels[part.poison_indices]) == {0}
    assert all(part.ids[i] in poisoned.poison["poison_ids"] for i in part.poison_indices)
    with pytest.raises(PudrtError, match="at least 1"):
        poisoned.per_class(0)


FORK_AFTER_ORT = """
import gc
import numpy as np, onnx, onnxruntime
from onnx import TensorProto, helper
from pudrt.io import embedded_dataset, iter_batches

graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 2  # a session with a thread pool, as every runner has
session = onnxruntime.InferenceSession(helper.make_model(graph).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
session.run(None, {"x": np.ones((8, 4), np.float32)})


class Cycle:
    pass


holder = Cycle()
holder.me, holder.session = holder, session  # only the collector can free it (a traceback holding a runner does that)
del session
gc.collect()  # the cycle is now in the oldest generation
del holder  # garbage there, until the next full collection


class CollectFirst:  # a full collection in the worker, as a long decoding run makes sooner or later
    def __init__(self, data):
        self.data, self.ids = data, data.ids

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if i == 0:
            gc.collect()
        return self.data[i]


print(sum(len(b.y) for b in iter_batches(CollectFirst(embedded_dataset("test")), 500, workers=1)))
"""


def test_decoding_workers_do_not_collect_an_inherited_onnx_runtime_session():
    # collected in a forked worker, a session waits forever for its thread pool's threads, which were not forked
    import subprocess
    import sys

    try:
        run = subprocess.run([sys.executable, "-c", FORK_AFTER_ORT], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the decoding worker hung collecting the ONNX Runtime session it inherited")
    assert run.returncode == 0 and run.stdout.split()[-1] == "2000", run.stderr[-2000:]
