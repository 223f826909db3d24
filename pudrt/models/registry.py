"""A registry of architectures by name: `create_model("resnet8", num_classes=10)`.

pudrt's own small models register themselves here; any torchvision classifier
is available by its torchvision name (`resnet18`, `mobilenet_v3_small`, ...),
built without pretrained weights. Architectures take the input they were trained
on; `pudrt.models.Normalized` adds per-channel normalisation in front when the
model expects it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from pudrt.errors import PudrtError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register `fn(num_classes) -> nn.Module` under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models(include_torchvision: bool = True) -> list[str]:
    names = sorted(_REGISTRY)
    if include_torchvision:
        import torchvision

        names += sorted(n for n in torchvision.models.list_models(torchvision.models) if n not in _REGISTRY)
    return names


def create_model(name: str, num_classes: int = 10) -> nn.Module:
    """Architecture `name` with `num_classes` outputs, its weights in channels-last layout.

    The layout changes results only by float rounding, and speed: at batch 256 torch's CPU convolutions ran
    1.3–1.4× faster forward and 1.0–1.2× faster forward and backward in it (`benchmarks/torch_layout.py`, quoted
    in the README), and a model whose weights are channels-last computes in that layout whatever the input's.
    Models loaded from a state dict get it too (the weights are copied into this model); saved state dicts are
    made contiguous (`pudrt.io.models.save_model`).
    """
    if num_classes < 1:
        raise PudrtError(f"--num-classes must be at least 1, got {num_classes}")
    if name in _REGISTRY:
        model = _REGISTRY[name](num_classes=num_classes)
    else:
        import torchvision

        if name not in torchvision.models.list_models(torchvision.models):
            raise PudrtError(
                f"unknown architecture {name!r}. pudrt's own: {', '.join(sorted(_REGISTRY))}; "
                f"or any torchvision classifier by name (e.g. resnet18). `pudrt train --list-archs` lists them all."
            )
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return model.to(memory_format=torch.channels_last)
