"""The embedded CIFAR-10 subset, and resolving `--data` / `PUDRT_DATA` to a dataset.

The subset ships inside the package (`pudrt/data/`), so `pudrt demo` and the
tests run with no network: 10,000 train and 2,000 test images, class-balanced,
with their original JPEG bytes (see `pudrt/data/README.md` for how it was built).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from pudrt.errors import PudrtError
from pudrt.io.datasets import LabelledImages, NpzDataset, open_dataset

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
EMBEDDED = {"train": DATA_DIR / "cifar10-train-10k.npz", "test": DATA_DIR / "cifar10-test-2k.npz"}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def embedded_dataset(split: str = "train") -> NpzDataset:
    """The embedded CIFAR-10 subset: `split` is "train" (10,000 images) or "test" (2,000)."""
    if split not in EMBEDDED:
        raise PudrtError(f"the embedded data has splits {sorted(EMBEDDED)}, not {split!r}")
    path = EMBEDDED[split]
    if not path.is_file():
        raise PudrtError(f"the embedded dataset {path} is missing from this install; reinstall pudrt")
    return NpzDataset(path)


def resolve_data(arg: str | os.PathLike | None, split: str = "train") -> LabelledImages:
    """The dataset a command should read.

    `arg` (a command's DATA or `--data`) wins; then the `PUDRT_DATA` environment
    variable; then the embedded subset. A directory that holds a dataset archive
    (such as CIFAR-10 as `cifar10-jpeg.tar.gz` with a `SHA256SUMS` file) is checked
    and unpacked once into the cache, then its `split` is opened.
    """
    if arg is None:
        arg = os.environ.get("PUDRT_DATA") or None
    if arg is None:
        return embedded_dataset(split)
    path = Path(arg).expanduser()
    archive = _find_archive(path)
    if archive is not None:
        path = unpack_archive(archive)
    return open_dataset(path, split=split)


def _find_archive(path: Path) -> Path | None:
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        return path
    if path.is_dir():
        entries = [p for p in sorted(path.iterdir()) if p.name.endswith((".tar.gz", ".tgz"))]
        has_data = any(p.is_dir() for p in path.iterdir()) or any(path.glob("*.npz")) or any(path.glob("*.tar"))
        if len(entries) == 1 and not has_data:
            return entries[0]
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("PUDRT_CACHE", Path.home() / ".cache" / "pudrt"))


def unpack_archive(archive: Path) -> Path:
    """Verify `archive` against a SHA256SUMS beside it (when present) and unpack it once into the cache."""
    digest = _sha256(archive)
    sums = archive.parent / "SHA256SUMS"
    if sums.is_file():
        expected = {
            parts[-1].lstrip("*"): parts[0]
            for parts in (line.split() for line in sums.read_text().splitlines())
            if len(parts) >= 2
        }
        if archive.name in expected and expected[archive.name] != digest:
            raise PudrtError(
                f"{archive} does not match its checksum in {sums} (sha256 {digest[:16]}…, expected "
                f"{expected[archive.name][:16]}…): the file is corrupt or was replaced; fetch it again."
            )
    target = cache_dir() / "datasets" / f"{archive.name.split('.')[0]}-{digest[:16]}"
    if target.is_dir():
        return _dataset_root(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("unpacking %s into %s (once)", archive, target)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, filter="data")  # refuses absolute paths, links out of tree, devices
        os.replace(tmp, target)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise PudrtError(f"could not unpack {archive}: {err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _dataset_root(target)


def _dataset_root(unpacked: Path) -> Path:
    """The archive's top folder when it has exactly one, else the unpack folder itself."""
    children = [p for p in unpacked.iterdir() if not p.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir() and not (unpacked / "train").is_dir():
        return children[0]
    return unpacked


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
