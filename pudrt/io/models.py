"""Load and save models without executing untrusted code.

Formats, chosen by content (and by extension when saving):

- state dict: `.pt`/`.pth` read with `torch.load(weights_only=True)`, or `.safetensors`;
  the architecture comes from the file's pudrt metadata or `--arch NAME` (+ `--num-classes K`,
  otherwise read off the head's weight);
- TorchScript archive (`.ts`, or any `torch.jit.save` zip);
- `torch.export` program (`.pt2`);
- ONNX (`.onnx`), only through a runner, for commands that need forward passes alone.

A file that is a full pickled `nn.Module` is refused unless the caller passes
`unsafe_pickle=True` (`--unsafe-pickle`): unpickling runs whatever code the file names.

pudrt saves a state dict of the bare architecture plus metadata (arch, classes,
input normalisation), so any PyTorch user can load it; TorchScript and `.pt2`
files hold the whole (logits, features) model with normalisation built in. All
saves are atomic.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from pudrt.errors import PudrtError
from pudrt.io.atomic import atomic_path
from pudrt.models import FeatureClassifier, Normalized, create_model, find_linear_head

log = logging.getLogger(__name__)

META_KEY = "pudrt"
FORMAT_VERSION = 1
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


@dataclass(frozen=True)
class ModelInfo:
    """What pudrt records about a model beside its weights."""

    arch: str | None
    num_classes: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    format: str = "state_dict"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "format_version": FORMAT_VERSION})

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelInfo:
        d = json.loads(text)
        return cls(
            arch=d.get("arch"),
            num_classes=int(d["num_classes"]),
            mean=tuple(d["mean"]) if d.get("mean") else None,
            std=tuple(d["std"]) if d.get("std") else None,
            format=d.get("format", "state_dict"),
        )


class _InferenceOnly(nn.Module):
    """A `torch.export` program's module, which is already in inference form and refuses `.train()`/`.eval()`.

    Accepting them as no-ops lets the rest of pudrt treat it like any module.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def train(self, mode: bool = True) -> _InferenceOnly:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor):
        return self.module(x)


class PairOutputs(nn.Module):
    """Logits of a model whose forward returns `(logits, features)` (pudrt's TorchScript/.pt2 saves)."""

    def __init__(self, pair: nn.Module):
        super().__init__()
        self.pair = pair

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pair(x)[0]


@dataclass
class LoadedModel:
    """A model ready for pudrt: `net(x in [0,1]) -> logits`, and `features()` for (logits, features)."""

    net: nn.Module
    info: ModelInfo
    path: Path | None = None

    def features(self) -> nn.Module:
        """A module mapping x to (logits, penultimate features)."""
        if isinstance(self.net, PairOutputs):
            return self.net.pair
        try:
            return FeatureClassifier(self.net)
        except PudrtError as err:
            if self.info.format in ("torchscript", "export"):
                raise PudrtError(
                    f"{self.path}: this {self.info.format} model gives logits only, and its head cannot be "
                    f"found from outside. Save it as a state dict and load it with --arch, or export it with "
                    f"`pudrt` so that it returns (logits, features)."
                ) from err
            raise


def sniff_format(path: Path) -> str:
    """One of: onnx, safetensors, torchscript, export, torch_zip, pickle."""
    if path.suffix == ".onnx":
        return "onnx"
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{" and path.suffix != ".pt2":
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n < os.path.getsize(path):
            return "safetensors"
    if zipfile.is_zipfile(path):
        names = zipfile.ZipFile(path).namelist()
        if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
            return "export"
        if any("/code/" in n for n in names) or any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "torch_zip"
    if head[:1] == b"\x80" or path.suffix in STATE_DICT_SUFFIXES:
        return "pickle"
    if path.suffix == ".pt2":
        return "export"
    raise PudrtError(
        f"{path}: not a model file pudrt knows (state dict .pt/.safetensors, TorchScript, .pt2, .onnx)"
    )


def load_model(
    path: str | os.PathLike,
    arch: str | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    unsafe_pickle: bool = False,
    map_location: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a model for pudrt; `mean`/`std` (the `--mean/--std` options) add input normalisation."""
    path = Path(path)
    if not path.is_file():
        raise PudrtError(f"model file {path} does not exist")
    if (mean is None) != (std is None):
        raise PudrtError("give both --mean and --std, or neither")
    fmt = sniff_format(path)
    if fmt == "onnx":
        raise PudrtError(
            f"{path} is an ONNX graph: it runs through an engine runner (scan, evaluate), but cannot be "
            f"trained or purified. Use the PyTorch model it was exported from."
        )
    if fmt == "torchscript":
        extra = {"pudrt.json": ""}
        try:
            net = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
        except RuntimeError as err:
            raise PudrtError(f"{path}: not a readable TorchScript archive ({err})") from None
        return _finish_packaged(net, extra["pudrt.json"], "torchscript", path, num_classes, mean, std)
    if fmt == "export":
        extra = {"pudrt.json": ""}
        try:
            ep = torch.export.load(str(path), extra_files=extra)
        except Exception as err:  # noqa: BLE001 - torch raises many types for a bad archive
            raise PudrtError(f"{path}: not a readable torch.export (.pt2) program ({err})") from None
        return _finish_packaged(_InferenceOnly(ep.module()), extra["pudrt.json"], "export", path, num_classes, mean,
                                std)
    if fmt == "safetensors":
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = (f.metadata() or {}).get(META_KEY)
            state = load_file(str(path), device=str(map_location))
        except Exception as err:  # noqa: BLE001 - safetensors' error types differ across releases
            raise PudrtError(f"{path}: not a readable safetensors file ({err})") from None
        info = ModelInfo.from_json(meta) if meta else None
        return _from_state_dict(state, info, path, arch, num_classes, mean, std)
    # torch.save output (zip or legacy): weights only, unless the user vouches for the file.
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if not _parses_as_pickle(path):
            raise PudrtError(f"{path}: not a readable PyTorch file (the pickle inside is damaged)") from None
        if not unsafe_pickle:
            raise PudrtError(
                f"{path} is a pickled Python object (e.g. a whole nn.Module), not a state dict. Loading it "
                f"runs whatever code the file names, which an untrusted model can abuse. If you trust this "
                f"file, pass --unsafe-pickle; better, re-save it once as a state dict "
                f"(torch.save(model.state_dict(), 'model.pt')) and load that with --arch."
            ) from None
        log.warning("%s: unpickling with arbitrary code execution, as --unsafe-pickle asked", path)
        obj = torch.load(path, map_location=map_location, weights_only=False)
        if isinstance(obj, nn.Module):
            return _wrap(obj, ModelInfo(arch, _num_classes(obj, num_classes), format="pickle"), path, mean, std)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise PudrtError(f"{path}: not a readable PyTorch file ({err})") from None
    if not isinstance(obj, dict):
        raise PudrtError(f"{path} holds a {type(obj).__name__}, not a state dict")
    info = ModelInfo.from_json(json.dumps(obj[META_KEY])) if isinstance(obj.get(META_KEY), dict) else None
    return _from_state_dict(_unwrap_state(obj), info, path, arch, num_classes, mean, std)


def _parses_as_pickle(path: Path) -> bool:
    """Whether the file's pickle stream is well formed, checked opcode by opcode without running it."""
    import io
    import pickletools

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("data.pkl")]
            if not names:
                return False
            data = zf.read(names[0])
    else:
        data = path.read_bytes()
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):  # legacy torch.save files hold several pickles in a row
            for _ in pickletools.genops(stream):
                pass
    except (ValueError, EOFError, IndexError, struct.error):
        return False
    return True


def _unwrap_state(obj: dict) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, whichever common layout it uses."""
    for key in ("state_dict", "model_state_dict", "model", "net", "state"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    prefixes = ("module.", "_orig_mod.")
    for p in prefixes:  # DataParallel / torch.compile wrappers
        if state and all(k.startswith(p) for k in state):
            state = {k[len(p):]: v for k, v in state.items()}
    return state


def _from_state_dict(state, info, path, arch, num_classes, mean, std) -> LoadedModel:
    if info is not None and arch is not None and info.arch is not None and arch != info.arch:
        raise PudrtError(f"{path} was saved as --arch {info.arch}, not {arch}; leave --arch out to use the file's")
    arch = arch or (info.arch if info else None)
    if arch is None:
        raise PudrtError(
            f"{path} is a bare state dict: say which architecture it belongs to with --arch NAME "
            f"(and --num-classes K); `pudrt train --list-archs` lists the names."
        )
    if num_classes is None:
        num_classes = info.num_classes if info else _head_classes(arch, state, path)
    model = create_model(arch, num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        missing = sorted(set(model.state_dict()) - set(state))
        unexpected = sorted(set(state) - set(model.state_dict()))
        detail = (
            f"missing {missing[:3]}, unexpected {unexpected[:3]}" if missing or unexpected
            else str(err).splitlines()[-1].strip()
        )
        raise PudrtError(
            f"{path} does not fit --arch {arch} with {num_classes} classes ({detail}). "
            f"Check --arch and --num-classes."
        ) from None
    model.eval()
    if mean is None and info is not None and info.mean is not None:
        mean, std = info.mean, info.std
    return _wrap(model, ModelInfo(arch, num_classes, format="state_dict"), path, mean, std)


def _head_classes(arch: str, state: dict, path: Path) -> int:
    probe = create_model(arch, 10)
    head = find_linear_head(probe)
    w = state.get(f"{head}.weight")
    if w is None:
        raise PudrtError(f"{path}: no `{head}.weight` for the head of --arch {arch}; pass --num-classes")
    return int(w.shape[0])


def _finish_packaged(net, meta_text, fmt, path, num_classes, mean, std) -> LoadedModel:
    info = ModelInfo.from_json(meta_text) if meta_text else None
    net.eval()
    if info is not None:  # saved by pudrt: returns (logits, features), normalisation inside
        if mean is not None:
            raise PudrtError(f"{path} was saved by pudrt with its input normalisation inside; drop --mean/--std")
        return _wrap(PairOutputs(net), ModelInfo(info.arch, info.num_classes, format=fmt), path, mean, std)
    return _wrap(net, ModelInfo(None, _num_classes(net, num_classes), format=fmt), path, mean, std)


def _num_classes(net, given: int | None) -> int:
    if given is not None:
        return given
    with torch.no_grad():
        out = net(torch.rand(2, 3, 32, 32))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return int(out.shape[-1])


def _wrap(model, info: ModelInfo, path, mean, std) -> LoadedModel:
    if mean is not None:
        model = Normalized(model, mean, std)
        info = ModelInfo(info.arch, info.num_classes, tuple(mean), tuple(std), info.format)
    return LoadedModel(model, info, path)


def save_model(
    model: nn.Module,
    path: str | os.PathLike,
    arch: str,
    num_classes: int,
    example_input: torch.Tensor | None = None,
) -> Path:
    """Save `model` (optionally `Normalized`) atomically; the format follows the extension.

    `.pt`/`.pth`: state dict of the bare architecture with pudrt metadata (loads with
    `torch.load(weights_only=True)`); `.safetensors`: the same as safetensors;
    `.ts`: TorchScript of the (logits, features) model; `.pt2`: a `torch.export`
    program of it with a dynamic batch dimension.
    """
    path = Path(path)
    inner, mean, std = model, None, None
    if isinstance(model, Normalized):
        inner = model.model
        mean = tuple(model.normalize.mean.flatten().tolist())
        std = tuple(model.normalize.std.flatten().tolist())
    suffix = path.suffix
    if suffix in STATE_DICT_SUFFIXES or suffix == ".safetensors":
        info = ModelInfo(arch, num_classes, mean, std)
        state = {k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}
        with atomic_path(path) as tmp:
            if suffix == ".safetensors":
                from safetensors.torch import save_file

                save_file(state, str(tmp), metadata={META_KEY: info.to_json()})
            else:
                torch.save({"state_dict": state, META_KEY: json.loads(info.to_json())}, tmp)
        return path
    if suffix not in (".ts", ".pt2"):
        raise PudrtError(f"cannot save a model as {suffix!r}: use .pt, .safetensors, .ts or .pt2 (or export .onnx)")
    pair = FeatureClassifier(model).eval().cpu()
    example = example_input if example_input is not None else torch.rand(2, 3, 32, 32)
    info = ModelInfo(arch, num_classes, format="torchscript" if suffix == ".ts" else "export")
    with atomic_path(path) as tmp:
        if suffix == ".ts":
            traced = torch.jit.trace(pair, example, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={"pudrt.json": info.to_json()})
        else:
            batch = torch.export.Dim("batch", min=1)
            ep = torch.export.export(pair, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(ep, str(tmp), extra_files={"pudrt.json": info.to_json()})
    return path
