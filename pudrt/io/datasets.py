"""Labelled image datasets: ImageFolder directories, WebDataset-style tar shards, `.npz`.

Every reader builds a small index up front (ids and labels, never pixels) and
decodes one image at a time, so a dataset of any size streams through
`iter_batches` with worker processes and bounded memory. Every sample has a
stable id (its path relative to the dataset root, `shard.tar/key`, or its index
in an `.npz`) so that results can point back to files.

A sample that cannot be decoded does not stop the run: it is reported by id,
skipped and counted (`SkipCounter`). Problems with the dataset as a whole (no
classes, an empty class, labels out of range, wrong array shapes) raise a
`PudrtError` that says what to fix.
"""

from __future__ import annotations

import functools
import gc
import io
import json
import logging
import os
import struct
import tarfile
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pudrt.errors import PudrtError
from pudrt.progress import progress
from pudrt.system import available_cores

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"})
POISON_FILE = "poison.json"
"""Written by `pudrt poison` beside a dataset: the attack's parameters and the poisoned ids."""


@dataclass(frozen=True)
class Skipped:
    """A sample that could not be read, and why."""

    index: int
    id: str
    reason: str


class LabelledImages(torch.utils.data.Dataset):
    """Base class: an indexable dataset of (RGB image, label) with stable ids.

    Subclasses set `ids`, `labels`, `classes`, `root` and implement `_read(i)`,
    which returns the encoded bytes or a decoded HWC uint8 array of sample `i`.
    `__getitem__` returns `(chw_uint8_tensor, label, index)` or a `Skipped`
    record, never raises for a bad sample.
    """

    ids: list[str]
    labels: np.ndarray
    classes: list[str]
    root: Path
    decoded = False
    """Whether reading a sample is only an array lookup (`DecodedImages`): batches then need no worker processes."""

    def __init__(self, image_size: tuple[int, int] | None = None):
        self.image_size = image_size
        self.poison = _read_poison_file(self.root)

    # -- what subclasses provide -------------------------------------------------
    def _read(self, i: int) -> bytes | np.ndarray:
        raise NotImplementedError

    # -- public -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @functools.cached_property
    def poison_indices(self) -> np.ndarray | None:
        """Ground-truth poison indices when the dataset was written by `pudrt poison`."""
        if self.poison is None:
            return None
        where = {sid: i for i, sid in enumerate(self.ids)}
        return np.array(sorted(where[s] for s in self.poison["poison_ids"] if s in where), dtype=np.int64)

    def describe(self) -> str:
        return f"{type(self).__name__}({self.root}, {len(self)} samples, {self.num_classes} classes)"

    def load_image(self, i: int) -> np.ndarray:
        """Decode sample `i` as HWC uint8 RGB; raises `ValueError` with a reason when it cannot."""
        raw = self._read(i)
        if isinstance(raw, np.ndarray):
            img = raw
        else:
            img = _decode(raw)
        if self.image_size is not None and img.shape[:2] != self.image_size:
            h, w = self.image_size
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
        return img

    def __getitem__(self, i: int):
        i = int(i)
        try:
            img = self.load_image(i)
        except (ValueError, OSError) as err:
            return Skipped(i, self.ids[i], str(err))
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), int(self.labels[i]), i

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelledImages:
        """A view of samples `indices` (new indices 0..len-1; ids, labels and poison ground truth carried)."""
        return SubsetImages(self, indices)

    def per_class(self, count: int, seed: int = 0) -> LabelledImages:
        """A stratified view: the first `count` samples of each class in a seeded permutation (all of a class that
        has fewer), in their original order. Ground-truth poisons are carried; a dirty-label attack's sit in its target
        class, so a subset of such data holds fewer of them than the whole (subset clean data, then poison it, to
        keep the rate)."""
        if count < 1:
            raise PudrtError(f"the number of images per class must be at least 1, got {count}")
        rng = np.random.default_rng(seed)
        picks = [rng.permutation(np.flatnonzero(self.labels == c))[:count] for c in range(self.num_classes)]
        return self.subset(np.sort(np.concatenate(picks)))

    def check_num_classes(self, num_classes: int) -> None:
        """Raise when the labels do not fit a model with `num_classes` outputs."""
        top = int(self.labels.max()) if len(self.labels) else -1
        if top >= num_classes:
            raise PudrtError(
                f"{self.root}: labels go up to {top} but the model has {num_classes} classes. "
                f"Pass the right --num-classes, or check that the data belongs to this model."
            )


class SubsetImages(LabelledImages):
    """Some samples of another dataset, read through it."""

    def __init__(self, parent: LabelledImages, indices: Sequence[int] | np.ndarray):
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(parent)):
            raise PudrtError(f"subset indices must lie in 0..{len(parent) - 1}")
        self.parent, self._idx = parent, idx
        self.root, self.classes = parent.root, parent.classes
        self.ids = [parent.ids[i] for i in idx]
        self.labels = parent.labels[idx]
        self.image_size = parent.image_size
        self.poison = parent.poison
        self.decoded = parent.decoded

    def _read(self, i: int) -> bytes | np.ndarray:
        return self.parent._read(int(self._idx[i]))


class DecodedImages(LabelledImages):
    """The readable samples of another dataset, decoded once into a uint8 NCHW memory map in a temporary folder.

    For data that is read many times (a purify run's training rows, its per-step metrics on the test data): after
    this one pass nothing is decoded again. `x[i]` is sample `index[i]` of `parent`; unreadable samples are
    reported once, counted in `skipped`, and left out.
    """

    decoded = True

    def __init__(self, parent: LabelledImages, batch_size: int = 512, desc: str = "decoding"):
        self._dir = tempfile.TemporaryDirectory(prefix="pudrt-decoded-")
        skips = SkipCounter(parent)
        x, index, n = None, [], 0
        for batch in progress(iter_batches(parent, batch_size, skips=skips), desc,
                              total=-(-len(parent) // batch_size)):
            if x is None:
                x = np.lib.format.open_memmap(Path(self._dir.name) / "x.npy", "w+", np.uint8,
                                              (len(parent), *batch.x.shape[1:]))
            x[n : n + len(batch.y)] = batch.x.numpy()
            index.append(batch.index.numpy())
            n += len(batch.y)
        self.x = x[:n] if x is not None else np.zeros((0, 3, 0, 0), np.uint8)
        self.index = np.concatenate(index) if index else np.zeros(0, np.int64)
        self.skipped = len(skips)
        self.root, self.classes, self.poison, self.image_size = parent.root, parent.classes, parent.poison, None
        self.ids = [parent.ids[i] for i in self.index]
        self.labels = np.asarray(parent.labels, np.int64)[self.index]

    def _read(self, i: int) -> np.ndarray:
        return self.x[i].transpose(1, 2, 0)


def _decode(raw: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"not a readable image ({type(err).__name__}: {err})") from None


def _read_poison_file(root: Path) -> dict | None:
    path = (root if root.is_dir() else root.parent) / POISON_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PudrtError(f"{path} is not valid JSON ({err}); it should be the file `pudrt poison` wrote") from None


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if labels.size == 0:
        return
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise PudrtError(
            f"{where}: {bad.size} label(s) out of range 0..{num_classes - 1}, the first at index {i} "
            f"(label {int(labels[i])}). Fix the labels or the class list."
        )


# -- ImageFolder ---------------------------------------------------------------


class ImageFolderDataset(LabelledImages):
    """`root/<class>/<file>` with classes in sorted folder order, as torchvision's ImageFolder.

    Files whose extension is not an image's are skipped with one warning; an
    image file that does not decode is skipped when it is read.
    """

    def __init__(self, root: str | os.PathLike, image_size: tuple[int, int] | None = None):
        self.root = Path(root)
        class_dirs = sorted(
            (e for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name
        )
        if not class_dirs:
            raise PudrtError(
                f"{self.root} has no class folders. An ImageFolder dataset is laid out as "
                f"<root>/<class>/<image>.png; tar shards and .npz files are read too."
            )
        self.classes = [d.name for d in class_dirs]
        ids, labels, ignored = [], [], []
        for label, d in enumerate(class_dirs):
            names = []
            for dirpath, dirnames, filenames in os.walk(d.path):
                dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
                rel = os.path.relpath(dirpath, self.root)
                for name in sorted(filenames):
                    if name.startswith("."):
                        continue
                    (names if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS else ignored).append(
                        f"{rel}/{name}"
                    )
            if not names:
                raise PudrtError(
                    f"class folder {d.path} holds no images. Class indices come from the sorted folder "
                    f"names, so an empty class would shift every later label: remove the folder or add images."
                )
            ids.extend(names)
            labels.extend([label] * len(names))
        if ignored:
            log.warning(
                "%s: skipped %d file(s) that are not images (by extension), e.g. %s",
                self.root, len(ignored), ", ".join(ignored[:3]),
            )
        self.skipped_files = ignored
        self.ids = ids
        self.labels = np.asarray(labels, dtype=np.int64)
        super().__init__(image_size)

    def _read(self, i: int) -> bytes:
        return (self.root / self.ids[i]).read_bytes()


# -- WebDataset-style tar shards ----------------------------------------------


@dataclass(frozen=True)
class _TarEntry:
    shard: int
    offset: int
    size: int


class TarShardDataset(LabelledImages):
    """WebDataset-style uncompressed tar shards: `key.jpg` (or .png, ...) + `key.cls` per sample.

    The index stores each image member's byte offset, so samples are read by
    seeking, in any order, from any worker. Class names come from
    `classes.txt` (one per line) or `classes.json` beside the shards when present.
    A truncated shard keeps the samples before the cut, with a warning.
    """

    def __init__(
        self,
        shards: Sequence[str | os.PathLike],
        root: str | os.PathLike,
        num_classes: int | None = None,
        image_size: tuple[int, int] | None = None,
    ):
        self.root = Path(root)
        self.shards = [str(s) for s in shards]
        ids, labels, entries = [], [], []
        for shard_idx, shard in enumerate(self.shards):
            for key, entry, label in _index_shard(shard, shard_idx):
                ids.append(f"{os.path.basename(shard)}/{key}")
                labels.append(label)
                entries.append(entry)
        self.ids = ids
        self.labels = np.asarray(labels, dtype=np.int64)
        self._entries = entries
        names = _class_names_beside(self.root)
        if names is None:
            k = num_classes if num_classes is not None else (int(self.labels.max()) + 1 if ids else 0)
            names = [str(c) for c in range(k)]
        self.classes = names
        _check_labels(self.labels, len(names), str(self.root))
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()
        super().__init__(image_size)

    def _read(self, i: int) -> bytes:
        if self._pid != os.getpid():  # a forked worker must not share file offsets with its parent
            self._handles, self._pid = {}, os.getpid()
        e = self._entries[i]
        f = self._handles.get(e.shard)
        if f is None:
            f = self._handles[e.shard] = open(self.shards[e.shard], "rb")  # noqa: SIM115
        f.seek(e.offset)
        data = f.read(e.size)
        if len(data) != e.size:
            raise ValueError(f"shard ends inside this sample ({len(data)} of {e.size} bytes)")
        return data

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state


def _class_names_beside(root: Path) -> list[str] | None:
    base = root if root.is_dir() else root.parent
    if (base / "classes.txt").is_file():
        return [line.strip() for line in (base / "classes.txt").read_text().splitlines() if line.strip()]
    if (base / "classes.json").is_file():
        return list(json.loads((base / "classes.json").read_text()))
    return None


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the basename."""
    d, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def _index_shard(path: str, shard_idx: int) -> Iterator[tuple[str, _TarEntry, int]]:
    if path.endswith((".gz", ".tgz", ".bz2", ".xz", ".zst")):
        raise PudrtError(
            f"{path} is compressed. pudrt reads tar shards by seeking to each sample; "
            f"decompress the shard first (e.g. `gunzip {path}`)."
        )
    size = os.path.getsize(path)
    images: dict[str, _TarEntry] = {}
    labels: dict[str, str] = {}
    truncated = None
    try:
        with tarfile.open(path, "r:") as tf:
            while True:
                try:
                    m = tf.next()
                except (tarfile.ReadError, EOFError, OSError) as err:
                    truncated = str(err)
                    break
                if m is None:
                    break
                if not m.isfile():
                    continue
                if m.offset_data + m.size > size:
                    truncated = f"member {m.name} runs past the end of the file"
                    break
                key, ext = _split_key(m.name)
                if ext == "cls":
                    labels[key] = tf.extractfile(m).read().decode("utf-8", "replace").strip()
                elif "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
                    images[key] = _TarEntry(shard_idx, m.offset_data, m.size)
    except tarfile.ReadError as err:
        raise PudrtError(f"{path} is not a readable tar shard ({err})") from None
    if truncated:
        log.warning("%s is truncated (%s); keeping the %d complete samples before the cut", path, truncated,
                    len(images.keys() & labels.keys()))
    unlabelled = sorted(images.keys() - labels.keys())
    if unlabelled:
        log.warning("%s: skipped %d image(s) with no .cls label, e.g. %s", path, len(unlabelled), unlabelled[0])
    for key in sorted(images.keys() & labels.keys()):
        try:
            label = int(labels[key])
        except ValueError:
            log.warning("%s: skipped %s, its .cls is %r, not an integer class", path, key, labels[key][:40])
            continue
        yield key, images[key], label


# -- .npz ------------------------------------------------------------------------


class NpzDataset(LabelledImages):
    """`.npz` with `x` (uint8, N×H×W×3) and `y` (int, N), or packed encoded images.

    The packed form stores `encoded` (uint8 bytes of all image files, concatenated)
    and `offsets` (int64, N+1) instead of `x`; pudrt's embedded CIFAR-10 subset uses
    it to keep the original JPEG bytes. Optional: `classes` (str, K) and `ids`
    (str, N). Arrays stored uncompressed (`np.savez`) are memory-mapped, never
    read whole; compressed ones (`np.savez_compressed`) must be decompressed into
    memory and are reported as such. Pickled object arrays are refused.
    """

    def __init__(self, path: str | os.PathLike, image_size: tuple[int, int] | None = None):
        self.root = Path(path)
        try:
            arrays = _open_npz(self.root)
        except (zipfile.BadZipFile, ValueError, OSError) as err:
            raise PudrtError(f"{self.root} is not a readable .npz file ({err})") from None
        if "y" not in arrays:
            raise PudrtError(f"{self.root} has no `y` array of labels (it has: {', '.join(sorted(arrays))})")
        y = np.asarray(arrays["y"]())
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise PudrtError(f"{self.root}: `y` must be a 1-D integer array, got shape {y.shape} {y.dtype}")
        n = len(y)
        if "x" in arrays:
            x = arrays["x"]()
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3 or x.shape[0] != n:
                raise PudrtError(
                    f"{self.root}: `x` must be uint8 of shape (N, H, W, 3) with N = len(y) = {n}; "
                    f"got {x.dtype} {tuple(x.shape)}. Images are stored channels-last, 0..255."
                )
            self._x, self._encoded = x, None
        elif "encoded" in arrays and "offsets" in arrays:
            enc, off = arrays["encoded"](), np.asarray(arrays["offsets"]())
            if enc.dtype != np.uint8 or enc.ndim != 1 or off.shape != (n + 1,):
                raise PudrtError(
                    f"{self.root}: packed images need `encoded` (uint8, 1-D) and `offsets` of shape "
                    f"(N+1,) = ({n + 1},); got {enc.dtype} {tuple(enc.shape)} and {tuple(off.shape)}"
                )
            self._x, self._encoded, self._offsets = None, enc, off.astype(np.int64)
        else:
            raise PudrtError(
                f"{self.root} has neither `x` (uint8 N×H×W×3 images) nor `encoded` + `offsets` "
                f"(packed image files); it has: {', '.join(sorted(arrays))}"
            )
        self.classes = (
            [str(c) for c in arrays["classes"]()] if "classes" in arrays
            else [str(c) for c in range(int(y.max()) + 1 if n else 0)]
        )
        _check_labels(y, len(self.classes), str(self.root))
        self.labels = y.astype(np.int64)
        self.ids = [str(s) for s in arrays["ids"]()] if "ids" in arrays else [str(i) for i in range(n)]
        if len(self.ids) != n:
            raise PudrtError(f"{self.root}: `ids` has {len(self.ids)} entries for {n} labels")
        super().__init__(image_size)

    def _read(self, i: int) -> bytes | np.ndarray:
        if self._x is not None:
            return np.asarray(self._x[i])
        return self._encoded[self._offsets[i] : self._offsets[i + 1]].tobytes()


def _open_npz(path: Path) -> dict[str, callable]:
    """Map array name -> loader; stored members load as read-only memmaps."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-4]
            if info.compress_type == zipfile.ZIP_STORED:
                out[name] = _memmap_loader(path, info)
            else:
                out[name] = _eager_loader(path, info.filename, name)
    return out


def _memmap_loader(path: Path, info: zipfile.ZipInfo):
    def load():
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            header = f.read(30)
            if header[:4] != b"PK\x03\x04":
                raise ValueError(f"bad zip entry for {info.filename}")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype.hasobject:
                raise PudrtError(f"{path}: array {info.filename[:-4]} holds Python objects; pudrt never unpickles "
                                 f"data arrays. Store it with a numeric or string dtype.")
            offset = f.tell()
        if int(np.prod(shape)) == 0:
            return np.zeros(shape, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                         order="F" if fortran else "C")

    return load


def _eager_loader(path: Path, member: str, name: str):
    def load():
        log.info("%s: array %s is compressed and is read into memory; use np.savez to memory-map it",
                 path, name)
        with zipfile.ZipFile(path) as zf, zf.open(member) as f:
            try:
                return np.lib.format.read_array(io.BytesIO(f.read()), allow_pickle=False)
            except ValueError as err:
                raise PudrtError(f"{path}: array {name} cannot be read without unpickling ({err})") from None

    return load


# -- opening -----------------------------------------------------------------------


def open_dataset(
    path: str | os.PathLike,
    split: str | None = None,
    image_size: tuple[int, int] | None = None,
    num_classes: int | None = None,
) -> LabelledImages:
    """Open a labelled dataset, choosing the reader from what is at `path`.

    - a `.npz` file, or a directory holding exactly one `.npz` → `NpzDataset`
    - a `.tar` file, or a directory of `.tar` shards → `TarShardDataset`
    - a directory of class folders → `ImageFolderDataset`
    - a directory with `train/` and `test/` (a dataset root) → that `split` of it
    """
    path = Path(path)
    if not path.exists():
        raise PudrtError(f"dataset {path} does not exist")
    if path.is_file():
        if path.suffix == ".npz":
            return NpzDataset(path, image_size)
        if path.suffix == ".tar" or path.name.endswith((".tar.gz", ".tgz")):
            return TarShardDataset([path], path, num_classes, image_size)
        raise PudrtError(f"{path}: a dataset file must be .npz or .tar (or pass a directory)")
    if split is not None and (path / split).is_dir():
        return open_dataset(path / split, None, image_size, num_classes)
    entries = sorted(os.listdir(path))
    shards = [path / e for e in entries if e.endswith(".tar")]
    npz = [path / e for e in entries if e.endswith(".npz")]
    if shards:
        return TarShardDataset(shards, path, num_classes, image_size)
    if len(npz) == 1:
        return NpzDataset(npz[0], image_size)
    if {"train", "test"} <= set(entries) and split is None:
        raise PudrtError(f"{path} holds train/ and test/ splits; say which one (e.g. {path / 'train'})")
    return ImageFolderDataset(path, image_size)


# -- batching ------------------------------------------------------------------------


@dataclass
class Batch:
    """A collated batch: uint8 NCHW images, labels, dataset indices, and what was skipped."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    skipped: list[Skipped] = field(default_factory=list)

    def float(self) -> torch.Tensor:
        """Images as float32 in [0, 1], the one pixel domain of pudrt."""
        return self.x.float().div_(255.0)


def collate(items: list) -> Batch:
    good = [it for it in items if not isinstance(it, Skipped)]
    skipped = [it for it in items if isinstance(it, Skipped)]
    if not good:
        return Batch(torch.zeros(0, 3, 0, 0, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                     torch.zeros(0, dtype=torch.long), skipped)
    shapes = Counter(tuple(t[0].shape) for t in good)
    if len(shapes) > 1:
        # A batch must be one tensor: keep the majority size, report the rest.
        main = shapes.most_common(1)[0][0]
        for t in good:
            if tuple(t[0].shape) != main:
                skipped.append(Skipped(t[2], "", f"image is {t[0].shape[1]}×{t[0].shape[2]}, the dataset is "
                                                 f"{main[1]}×{main[2]}; pass --image-size to resize"))
        good = [t for t in good if tuple(t[0].shape) == main]
    return Batch(
        torch.stack([t[0] for t in good]),
        torch.tensor([t[1] for t in good], dtype=torch.long),
        torch.tensor([t[2] for t in good], dtype=torch.long),
        skipped,
    )


class SkipCounter:
    """Counts and reports skipped samples; one warning per sample up to a limit, then a summary."""

    def __init__(self, dataset: LabelledImages, warn_limit: int = 20):
        self.dataset = dataset
        self.warn_limit = warn_limit
        self.skipped: list[Skipped] = []

    def add(self, items: list[Skipped]) -> None:
        for s in items:
            sid = s.id or self.dataset.ids[s.index]
            if len(self.skipped) < self.warn_limit:
                log.warning("skipped sample %d (%s): %s", s.index, sid, s.reason)
            elif len(self.skipped) == self.warn_limit:
                log.warning("more samples skipped; the total is reported at the end")
            self.skipped.append(Skipped(s.index, sid, s.reason))

    def __len__(self) -> int:
        return len(self.skipped)


def iter_batches(
    dataset: LabelledImages,
    batch_size: int = 256,
    indices: Sequence[int] | np.ndarray | None = None,
    workers: int | None = None,
    skips: SkipCounter | None = None,
) -> Iterator[Batch]:
    """Stream `dataset` (or `indices` of it, in that order) in batches decoded by worker processes.

    Bad samples are left out of the batches and added to `skips`.
    """
    if workers is None:  # decoded data is an array lookup: worker processes would only add their start-up
        workers = 0 if getattr(dataset, "decoded", False) else default_workers()
    subset = dataset if indices is None else torch.utils.data.Subset(dataset, np.asarray(indices).tolist())
    if len(subset) == 0:
        return
    loader = torch.utils.data.DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    skips = skips if skips is not None else SkipCounter(dataset)
    for batch in _forked_workers(loader):
        if batch.skipped:
            skips.add(batch.skipped)
        if len(batch.y):
            yield batch


def _forked_workers(loader: torch.utils.data.DataLoader):
    """`iter(loader)`, whose worker processes never collect what they inherit.

    A worker is forked from a process that may hold garbage not yet collected: an ONNX Runtime session in a
    reference cycle, say (a traceback that holds a runner does that). Collected in the worker, such a session
    waits forever for its thread pool, whose threads were not forked with it (seen: a test run hung so,
    2026-11-30). Freezing the collector across the fork puts everything the workers inherit out of their
    collector's reach, as `gc.freeze` is documented for; this process collects it as before.
    """
    if not loader.num_workers:
        return iter(loader)
    gc.freeze()
    try:
        return iter(loader)  # starts (forks) the workers
    finally:
        gc.unfreeze()


def default_workers() -> int:
    """Decoding workers: one per core beyond the one that runs the model, at least one."""
    env = os.environ.get("PUDRT_WORKERS")
    if env is not None:
        return max(0, int(env))
    return max(1, min(8, available_cores() - 1))
