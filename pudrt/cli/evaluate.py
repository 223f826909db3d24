"""`pudrt evaluate MODEL DATA`: measure a model, or the engine you ship, on test data.

MODEL is a PyTorch model file or an engine (`.onnx` through ONNX Runtime,
`.plan`/`.engine` through TensorRT); the same metrics run through either. It measures
C-Acc, ASR given a trigger, and adv_acc under the two PGD presets (PGD-7 at ε=6/255 as
in PBE/PUD, PGD-10 at ε=8/255) with the same PGD that `purify` trains with. An engine
has no gradient of its own to attack (an INT8 graph's rounding has none), so its
adv_acc needs the model it was exported from (`--source MODEL`): PGD runs on the
source's gradients, as it would for an attacker holding the weights, and the engine
classifies the examples; the source's own adv_acc on the same examples and the
engine-vs-source agreement on the clean test data come beside it. `--square-queries N`
adds the Square attack (black box, logits only), run against whatever is evaluated,
engine or model, at ε=8/255."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import torch
import typer

from pudrt.attacks import load_trigger
from pudrt.cli.common import ModelOpts, dataset_arg, load_model_from_opts
from pudrt.errors import PudrtError
from pudrt.evaluate import (
    adversarial_accuracy,
    agreement,
    attack_success_rate,
    clean_accuracy,
    square_accuracy,
    transferred_accuracy,
)
from pudrt.io import iter_batches, write_json_atomic

PGD_PRESETS = ((7, 6), (10, 8))
"""(steps, ε·255) of the adversarial-accuracy presets."""
SQUARE_EPS = 8
"""ε·255 of the Square attack (the L∞ standard of AutoAttack, whose black-box part it is)."""


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
    source: Annotated[Path | None, typer.Option(help="For an engine: the model file it was exported from. Adds the "
                                                     "engine's adv_acc on PGD examples crafted on the source's "
                                                     "gradients, and its agreement with the source.")] = None,
    square_queries: Annotated[int, typer.Option(help="Also run the Square attack (black box: logits only, so on the "
                                                     "engine itself) with this many queries per image on the "
                                                     "--adv-samples images; 0 skips it.")] = 0,
) -> None:
    """Clean accuracy (C-Acc) and attack success rate (ASR) of a model or engine on test data."""
    if square_queries < 0:
        raise PudrtError(f"--square-queries must be >= 0, got {square_queries}")
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
        is_engine = not isinstance(net, torch.nn.Module)
        if source is not None:
            if not is_engine:
                raise PudrtError(f"--source is the model an engine was exported from; {model} is a model itself")
            src = load_model_from_opts(source, arch, num_classes, mean, std, unsafe_pickle).net.eval()
            with torch.no_grad():
                classes = int(src(_first_image(test)).shape[1])
            if classes != int(probe.shape[1]):
                raise PudrtError(f"{source} has {classes} classes and the engine {model} {int(probe.shape[1])}: "
                                 f"--source must be the model the engine was exported from")
            result["source"] = str(source)
            result["vs_source"] = agreement(src, net, test)
        if adv_samples > 0 and (not is_engine or source is not None):
            for steps, eps in PGD_PRESETS:
                key = f"adv_acc@PGD-{steps}/{eps}"
                if is_engine:
                    acc = transferred_accuracy(src, {"engine": net, "source": src}, test, eps / 255, steps,
                                               limit=adv_samples)
                    result[key], result[f"source_{key}"] = acc["engine"], acc["source"]
                else:
                    result[key] = adversarial_accuracy(net, test, eps / 255, steps, limit=adv_samples)
        if square_queries and adv_samples > 0:
            square = square_accuracy(net, test, SQUARE_EPS / 255, square_queries, limit=adv_samples)
            result[f"adv_acc@Square-{square_queries}/{SQUARE_EPS}"] = square["accuracy"]
            result["square_median_queries"] = square["median_queries"]
    line = f"C-Acc {result['c_acc']:.4f}"
    if attack is not None:
        line += f"  ASR {result['asr']:.4f} ({attack.name}, target {attack.target})"
    for key, value in result.items():
        if key.startswith("adv_acc"):
            line += f"  {key} {value:.4f}"
    typer.echo(f"{line}  on {test.describe()}, run by {engine}")
    pgd_keys = [key for key in result if key.startswith("adv_acc@PGD")]
    if "vs_source" in result:
        vs = result["vs_source"]
        typer.echo(f"vs the source {source}: top-1 agreement {100 * vs['top1_agreement']:.2f}% on the clean test "
                   f"data, max |Δlogit| {vs['max_abs_logit']:.3g}" + "".join(
                       f"; {key} of the source itself {result['source_' + key]:.4f} (same examples)"
                       for key in pgd_keys))
        if pgd_keys:
            typer.echo("(the engine's PGD adv_acc: examples crafted on the source's gradients, classified by the "
                       "engine)")
    elif is_engine and adv_samples > 0:
        typer.echo("(PGD adv_acc of an engine needs the model it was exported from: add --source MODEL; PGD runs on "
                   "its gradients and the engine classifies the examples. --square-queries N attacks the engine "
                   "itself, from its logits)")
    if "square_median_queries" in result:
        typer.echo(f"Square attack (ε={SQUARE_EPS}/255, black box on {engine}): the images it turned took a median "
                   f"of {result['square_median_queries']:.0f} queries of {square_queries}")
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
