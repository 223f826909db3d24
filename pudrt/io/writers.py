"""Write labelled images losslessly, one batch at a time: ImageFolder of PNGs, `.npz`, or tar shards.

Poisoned images must not be re-encoded as JPEG (it would smear a 3×3 trigger),
so every writer is lossless. Each sample is named by its index in the source
dataset, so the output's ids point back to the input. A writer publishes its
output only when closed without error: an interrupted run leaves no half dataset.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from pudrt.errors import PudrtError

FORMATS = ("imagefolder", "npz", "tar")
SHARD_SIZE = 10_000


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class DatasetWriter:
    """`with DatasetWriter(out, "imagefolder", classes) as w: w.add(images_nhwc_uint8, labels, indices)`.

    `ids` lists the id of every written sample, in the order a reader of the
    output lists them.
    """

    def __init__(self, out: str | os.PathLike, fmt: str, classes: list[str], expected: int | None = None):
        if fmt not in FORMATS:
            raise PudrtError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.out = Path(out)
        if self.out.exists() and any(self.out.iterdir()):
            raise PudrtError(f"{self.out} exists and is not empty; choose a new output folder")
        self.fmt, self.classes, self.expected = fmt, classes, expected
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        self._ids: list[tuple[int, str]] = []  # (source index, id)
        self._labels: list[int] = []
        self._x = None
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0
        self._shard = -1

    def __enter__(self) -> DatasetWriter:
        return self

    def add(self, images: np.ndarray, labels, indices) -> None:
        for img, label, idx in zip(images, labels, indices, strict=True):
            label, idx = int(label), int(idx)
            if self.fmt == "imagefolder":
                sid = f"{self.classes[label]}/{idx:06d}.png"
                path = self.tmp / sid
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(_png(img))
            elif self.fmt == "tar":
                if self._tar is None or self._in_shard >= SHARD_SIZE:
                    self._next_shard()
                key = f"{idx:06d}"
                for name, data in ((f"{key}.png", _png(img)), (f"{key}.cls", str(label).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    self._tar.addfile(info, io.BytesIO(data))
                self._in_shard += 1
                sid = f"shard-{self._shard:05d}.tar/{key}"
            else:
                if self._x is None:
                    n = self.expected or 0
                    self._x = np.lib.format.open_memmap(self.tmp / "x.npy", "w+", np.uint8, (n, *img.shape))
                self._x[len(self._labels)] = img
                sid = str(len(self._labels))
            self._ids.append((idx, sid))
            self._labels.append(label)

    def _next_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
        self._shard += 1
        self._in_shard = 0
        self._tar = tarfile.open(self.tmp / f"shard-{self._shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT)

    @property
    def id_of(self) -> dict[int, str]:
        """Source index -> output id."""
        return dict(self._ids)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                return
            if self._tar is not None:
                self._tar.close()
                (self.tmp / "classes.txt").write_text("\n".join(self.classes) + "\n")
            if self.fmt == "npz":
                self._finish_npz()
            if self.out.exists():
                self.out.rmdir()
            os.replace(self.tmp, self.out)
        finally:
            if self._tar is not None and not self._tar.closed:
                self._tar.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _finish_npz(self) -> None:
        n = len(self._labels)
        x = self._x if self._x is not None else np.zeros((0, 1, 1, 3), np.uint8)
        with zipfile.ZipFile(self.tmp / "data.npz", "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("x.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(
                    f, {"descr": "|u1", "fortran_order": False, "shape": (n, *x.shape[1:])}
                )
                for start in range(0, n, 4096):
                    f.write(np.ascontiguousarray(x[start : min(n, start + 4096)]).tobytes())
            for name, arr in (("y", np.asarray(self._labels, np.int64)), ("classes", np.asarray(self.classes))):
                with zf.open(f"{name}.npy", "w") as f:
                    np.lib.format.write_array(f, arr, allow_pickle=False)
        del self._x
        (self.tmp / "x.npy").unlink(missing_ok=True)
