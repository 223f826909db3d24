"""Options shared by several commands, and small helpers to turn them into objects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pudrt.errors import PudrtError

DataOpt = Annotated[
    str | None,
    typer.Option("--data", envvar="PUDRT_DATA",
                 help="Dataset root or folder (ImageFolder, tar shards, .npz, or a folder with the CIFAR-10 "
                      "archive). Default: the embedded CIFAR-10 subset."),
]
ImageSizeOpt = Annotated[
    str | None, typer.Option("--image-size", help="Resize every image to HxW (e.g. 32x32) while reading.")
]


class ModelOpts:
    """Options of every command that loads a model file."""

    arch = Annotated[str | None, typer.Option(help="Architecture of a bare state dict (pudrt train --list-archs).")]
    num_classes = Annotated[int | None, typer.Option(help="Classes of a bare state dict (default: from its head).")]
    mean = Annotated[str | None, typer.Option(help="Per-channel mean the model expects its input normalised with, "
                                                   "e.g. 0.4914,0.4822,0.4465; pudrt adds the layer.")]
    std = Annotated[str | None, typer.Option(help="Per-channel std, with --mean.")]
    unsafe_pickle = Annotated[bool, typer.Option("--unsafe-pickle", help="Allow loading a pickled Python object: "
                                                 "this runs code from the file. Only for files you trust.")]


def load_model_from_opts(path: Path, arch, num_classes, mean, std, unsafe_pickle):
    from pudrt.io.models import load_model

    return load_model(path, arch=arch, num_classes=num_classes, mean=parse_floats(mean, "--mean"),
                      std=parse_floats(std, "--std"), unsafe_pickle=unsafe_pickle)


def dataset_arg(value: str | None, split: str, image_size: str | None = None):
    """A command's dataset: 'embedded' names the embedded subset; None falls back to PUDRT_DATA, then it."""
    from pudrt.io import embedded_dataset, resolve_data

    ds = embedded_dataset(split) if value == "embedded" else resolve_data(value, split)
    size = parse_image_size(image_size)
    if size is not None:
        ds.image_size = size
    return ds


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise PudrtError(f"--image-size must look like 32x32, got {text!r}") from None
    if h < 1 or w < 1:
        raise PudrtError(f"--image-size must be positive, got {text!r}")
    return h, w


def parse_floats(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise PudrtError(f"{name} takes comma-separated numbers, e.g. 0.4914,0.4822,0.4465; got {text!r}") from None


def check_output_model(path: Path) -> None:
    if path.suffix not in (".pt", ".pth", ".safetensors", ".ts", ".pt2"):
        raise PudrtError(f"-o {path}: the model format follows the extension: .pt, .safetensors, .ts or .pt2")
