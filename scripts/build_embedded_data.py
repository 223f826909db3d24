"""Build pudrt/data/cifar10-{train-10k,test-2k}.npz from the CIFAR-10 JPEG archive.

    python scripts/build_embedded_data.py ../shared/data/cifar10-jpeg.tar.gz

Takes a seeded, class-balanced sample (1,000 train / 200 test images per class)
and packs the original JPEG bytes (no re-encoding) into uncompressed .npz files
that pudrt memory-maps: `encoded`, `offsets`, `y`, `classes`, `ids`.
"""

from __future__ import annotations

import argparse
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np

PER_CLASS = {"train": 1000, "test": 200}
OUT = Path(__file__).resolve().parent.parent / "pudrt" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archive", type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    files: dict[str, dict[str, dict[str, bytes]]] = defaultdict(lambda: defaultdict(dict))
    with tarfile.open(args.archive) as tf:
        for m in tf:
            parts = m.name.split("/")
            if m.isfile() and len(parts) >= 3 and parts[-3] in PER_CLASS and m.name.endswith(".jpg"):
                files[parts[-3]][parts[-2]][m.name] = tf.extractfile(m).read()
    rng = np.random.default_rng(args.seed)
    for split, per_class in PER_CLASS.items():
        classes = sorted(files[split])
        ids, blobs, labels = [], [], []
        for label, cls in enumerate(classes):
            names = sorted(files[split][cls])
            for i in sorted(rng.choice(len(names), per_class, replace=False)):
                name = names[i]
                ids.append("/".join(name.split("/")[-3:]))
                blobs.append(files[split][cls][name])
                labels.append(label)
        offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(b) for b in blobs])
        out = OUT / f"cifar10-{split}-{len(ids) // 1000}k.npz"
        np.savez(
            out,
            encoded=np.frombuffer(b"".join(blobs), dtype=np.uint8),
            offsets=offsets,
            y=np.asarray(labels, dtype=np.int64),
            classes=np.asarray(classes),
            ids=np.asarray(ids),
        )
        print(f"{out}: {len(ids)} images, {out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
