"""`pudrt evaluate MODEL DATA`: measure a model on test data.

This release measures C-Acc and, given a trigger, ASR. Adversarial accuracy
(PGD presets), engine agreement and the trade-off table come with the engines
issue; the command says so rather than printing numbers it did not compute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pudrt.attacks import load_trigger
from pudrt.cli.common import ModelOpts, dataset_arg, load_model_from_opts
from pudrt.evaluate import attack_success_rate, clean_accuracy
from pudrt.io import write_json_atomic


def evaluate(
    model: Annotated[Path, typer.Argument(help="Model file (.pt, .safetensors, .ts, .pt2).")],
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
) -> None:
    """Clean accuracy (C-Acc) and attack success rate (ASR) of a model on test data."""
    loaded = load_model_from_opts(model, arch, num_classes, mean, std, unsafe_pickle)
    test = dataset_arg(data, split)
    test.check_num_classes(loaded.info.num_classes)
    attack = load_trigger(trigger) if trigger else None
    result = {"model": str(model), "data": str(test.root), "samples": len(test),
              "c_acc": clean_accuracy(loaded.net, test)}
    line = f"C-Acc {result['c_acc']:.4f}"
    if attack is not None:
        result["attack"] = attack.params()
        result["asr"] = attack_success_rate(loaded.net, test, attack)
        line += f"  ASR {result['asr']:.4f} ({attack.name}, target {attack.target})"
    typer.echo(f"{line}  on {test.describe()}")
    typer.echo("(adversarial accuracy and engine agreement are not measured yet in this release)")
    if output is not None:
        write_json_atomic(output, result)
        typer.echo(f"wrote {output}")
