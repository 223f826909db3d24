"""One adapter for every classifier: `FeatureClassifier(model)(x) -> (logits, features)`.

Features are the penultimate activations, the input of the Linear head, which
spectral signatures, SPECTRE and the consistency scores read. Models that expose
`forward_features` / `forward_head` (timm's protocol, and pudrt's own) are used
as they are. For any other classifier the head is found by running it once and
finding the `nn.Linear` whose output *is* the model's output; the body is the
model with that layer replaced by `Identity`, sharing all parameters. No
per-architecture code, no tracing, so the result exports to ONNX like any module.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn

from pudrt.errors import PudrtError


class Normalize(nn.Module):
    """(x - mean) / std per channel, for models that expect normalised input."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise PudrtError(f"--mean and --std need one value per channel and std > 0; got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Normalized(nn.Module):
    """`model` behind a `Normalize` layer, so that it takes [0, 1] pixels like everything in pudrt."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


class FeatureClassifier(nn.Module):
    """`forward(x) -> (logits, features)` for a classifier whose head is one Linear layer."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor | None = None):
        super().__init__()
        prefix: list[nn.Module] = []
        inner = model
        while isinstance(inner, Normalized):
            prefix.append(inner.normalize)
            inner = inner.model
        if callable(getattr(inner, "forward_features", None)) and callable(getattr(inner, "forward_head", None)):
            self.body = nn.Sequential(*prefix, _ForwardFeatures(inner))
            self.head = _ForwardHead(inner)
        else:
            head_name = find_linear_head(inner, example_input)
            self.body = nn.Sequential(*prefix, _without(inner, head_name))
            self.head = inner.get_submodule(head_name)
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x).flatten(1)
        return self.head(features), features


def as_pair(model: nn.Module, example_input: torch.Tensor | None = None) -> nn.Module:
    """`model` as a module returning (logits, features): itself when it already returns a pair
    (a FeatureClassifier, or a TorchScript/.pt2 model saved by pudrt), else a `FeatureClassifier`."""
    if isinstance(model, FeatureClassifier):
        return model
    probe = example_input[:2] if example_input is not None else torch.rand(2, 3, 32, 32)
    was_training = model.training
    with torch.no_grad():
        try:
            out = model.eval()(probe)
        except Exception:  # noqa: BLE001 - FeatureClassifier's head search reports a failing model clearly
            out = None
        finally:
            model.train(was_training)
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return model
    return FeatureClassifier(model, example_input)


class _ForwardFeatures(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


class _ForwardHead(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, f):
        return self.model.forward_head(f)


def find_linear_head(model: nn.Module, example_input: torch.Tensor | None = None) -> str:
    """Qualified name of the `nn.Linear` whose output is `model`'s output; a clear error if none is."""
    if example_input is None:
        example_input = torch.rand(2, 3, 32, 32)
    try:
        p = next(model.parameters())
        example_input = example_input.to(device=p.device, dtype=p.dtype)
    except StopIteration:
        pass
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(example_input)
    except Exception as err:  # noqa: BLE001 - any failure here means we cannot adapt the model
        raise PudrtError(
            f"could not run the model on a {tuple(example_input.shape)} example to find its head ({err}). "
            f"Pass images of the size the model expects."
        ) from err
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    for name, o in outputs.items():
        if o is out:
            return name
    raise PudrtError(
        "the model's output does not come straight from an nn.Linear layer, so pudrt cannot find its "
        "penultimate features. Wrap the model so that it exposes forward_features(x) -> (N, D) features and "
        "forward_head(features) -> logits, or make its last layer an nn.Linear."
    )


def _without(model: nn.Module, name: str) -> nn.Module:
    """A shallow copy of `model` whose submodule `name` is `Identity`; parameters stay shared."""
    parts = name.split(".")
    root = _shallow(model)
    parent = root
    for part in parts[:-1]:
        child = _shallow(parent._modules[part])
        parent._modules[part] = child
        parent = child
    parent._modules[parts[-1]] = nn.Identity()
    return root


def _shallow(m: nn.Module) -> nn.Module:
    c = copy.copy(m)
    c._modules = dict(m._modules)
    return c
