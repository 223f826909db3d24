"""`pudrt poison DATA OUT`: write a poisoned copy of a dataset and its ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pudrt.attacks import ATTACKS, create_attack
from pudrt.attacks.poison import poison_dataset
from pudrt.cli.common import ImageSizeOpt, dataset_arg
from pudrt.io.writers import FORMATS


def poison(
    data: Annotated[str, typer.Argument(help="Clean dataset (ImageFolder, tar shards, .npz, a root with train/; "
                                             "'embedded' for the embedded CIFAR-10 subset).")],
    out: Annotated[Path, typer.Argument(help="New folder for the poisoned dataset.")],
    attack: Annotated[str, typer.Option(help=f"One of: {', '.join(ATTACKS)}.")] = "badnets",
    ratio: Annotated[float, typer.Option(help="Fraction of the dataset to poison.")] = 0.1,
    target: Annotated[int, typer.Option(help="Target class (all-to-one).")] = 0,
    all_to_all: Annotated[bool, typer.Option("--all-to-all", help="Label y -> (y+1) mod K instead.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the sample choice and random triggers.")] = 0,
    fmt: Annotated[str, typer.Option("--format", help=f"Output: {', '.join(FORMATS)} (all lossless).")]
    = "imagefolder",
    split: Annotated[str, typer.Option(help="Split to read when DATA is a root with train/ and test/.")] = "train",
    image_size: ImageSizeOpt = None,
) -> None:
    """Poison a dataset with a backdoor attack (BackdoorBench defaults) and write poison.json beside it."""
    params = {"ratio": ratio, "target": target, "seed": seed}
    if all_to_all:
        params["all_to_all"] = True
    spec = create_attack(attack, **params)
    dataset = dataset_arg(data, split, image_size)
    result = poison_dataset(dataset, spec, out, fmt)
    typer.echo(
        f"wrote {result.written} samples to {result.out} ({fmt}): {len(result.poison_indices)} poisoned with "
        f"{spec.name}" + (f", {len(result.cross_indices)} noise-mode" if len(result.cross_indices) else "")
        + (f", {result.skipped} unreadable skipped" if result.skipped else "")
        + f"; ground truth in {result.out / 'poison.json'}"
    )
