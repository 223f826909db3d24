"""`pudrt evaluate MODEL DATA`: measure a model, or the engine you ship, on test data.

MODEL is a PyTorch model file or an engine (`.onnx` through ONNX Runtime,
`.plan`/`.engine` through TensorRT); the same metrics run through either. It measures
C-Acc, ASR given a trigger, and for PyTorch models adv_acc under the two PGD
presets (PGD-7 at ε=6/255 as in PBE/PUD, PGD-10 at ε=8/255) with the same PGD
that `purify` trains with. Adversarial accuracy of engines, engine-vs-source
agreement and the trade-off table are not there yet; the command says so rather
than printing numbers it did not compute.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import torch
import typer

from pudrt.attacks import load_trigger
from pudrt.cli.common import ModelOpts, dataset_arg, load_model_from_opts
from pudrt.errors import PudrtError
from pudrt.evaluate import adversarial_accuracy, attack_success_rate, clean_accuracy
from pudrt.io import iter_batches, write_json_atomic

PGD_PRESETS = ((7, 6), (10, 8))
"""(steps, ε·255) of the adversarial-accuracy presets."""


def evaluate(
    model: Annotated[Path, typer.Argument(help="Model file (.pt, .safetensors, .ts, .pt2) or engine (.onnx, "
                                               ".plan).")],
    data: Annotated[str | None, typer.Argument(help="Test data; default --data / PUDRT_DATA / embedded "
                                                    "('embedded' names the embedded test split).")] = None,
    trigger: Annotated[str | None, typer.Option(help="Attack name or poison.json, for ASR.")] = None,
    split: Annotated[str, typer.Option(help="Split to read when DATA is a root with train/ and test/.")] = "test",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Also write the numbers as JSON.")] = None,
    arch: ModelOpts.arch = None,
    num_classes: ModelOpts.num_classes = None,
    mean: ModelOpts.mean = None,
    std: ModelOpts.std = None,
    unsafe_pickle: ModelOpts.unsafe_pickle = False,
    device: Annotated[str, typer.Option(help="Engine device: cpu, cuda, trt or auto (for .onnx).")] = "cpu",
    adv_samples: Annotated[int, typer.Option(help="Test samples attacked for adv_acc (evenly spaced; 0 skips "
                                                  "it).")] = 1000,
    allow_fallback: Annotated[bool, typer.Option("--allow-fallback", help="Run on the CPU when the asked GPU "
                                                 "provider is unavailable, with a warning, instead of failing.")]
    = False,
) -> None:
    """Clean accuracy (C-Acc) and attack success rate (ASR) of a model or engine on test data."""
    test = dataset_arg(data, split)
    attack = load_trigger(trigger) if trigger else None
    with _logits_fn(model, device, allow_fallback, (arch, num_classes, mean, std, unsafe_pickle)) as (net, engine):
        probe = net(_first_image(test))
        test.check_num_classes(int(probe.shape[1]))
        result = {"model": str(model), "engine": engine, "data": str(test.root), "samples": len(test),
                  "c_acc": clean_accuracy(net, test)}
        if attack is not None:
            result["attack"] = attack.params()
            result["asr"] = attack_success_rate(net, test, attack)
        if adv_samples > 0 and isinstance(net, torch.nn.Module):
            for steps, eps in PGD_PRESETS:
                result[f"adv_acc@PGD-{steps}/{eps}"] = adversarial_accuracy(net, test, eps / 255, steps,
                                                                           limit=adv_samples)
    line = f"C-Acc {result['c_acc']:.4f}"
    if attack is not None:
        line += f"  ASR {result['asr']:.4f} ({attack.name}, target {attack.target})"
    for key, value in result.items():
        if key.startswith("adv_acc"):
            line += f"  {key} {value:.4f}"
    typer.echo(f"{line}  on {test.describe()}, run by {engine}")
    if not isinstance(net, torch.nn.Module):
        typer.echo("(adversarial accuracy of an engine and engine-vs-source agreement are not measured yet)")
    if output is not None:
        write_json_atomic(output, result)
        typer.echo(f"wrote {output}")


def _first_image(dataset) -> torch.Tensor:
    """One image of `dataset`, to learn the model's class count before the full pass."""
    for batch in iter_batches(dataset, 1, workers=0):
        return batch.float()
    raise PudrtError(f"{dataset.root} has no readable images")


@contextlib.contextmanager
def _logits_fn(path: Path, device: str, allow_fallback: bool, model_opts: tuple):
    """Yield (x -> logits tensor, what runs it) for a model file or an engine."""
    if path.suffix in (".onnx", ".plan", ".engine"):
        from pudrt.engine.runners import open_runner

        kwargs = {"allow_fallback": allow_fallback} if path.suffix == ".onnx" else {}
        with open_runner(path, device=device, **kwargs) as runner:
            yield (lambda x: torch.from_numpy(runner(x)["logits"])), runner.provider
        return
    loaded = load_model_from_opts(path, *model_opts)
    yield loaded.net, "torch-cpu"
