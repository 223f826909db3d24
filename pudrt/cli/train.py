"""`pudrt train DATA -o MODEL`: train a classifier, e.g. to make an infected model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pudrt.attacks import attack_from_params, load_trigger
from pudrt.cli.common import DataOpt, ImageSizeOpt, check_output_model, dataset_arg, parse_floats
from pudrt.errors import PudrtError
from pudrt.evaluate import accuracy, backdoor_rates, predict
from pudrt.io.models import save_model
from pudrt.models import list_models
from pudrt.train import TrainConfig, train_model

log = logging.getLogger(__name__)


def _list_archs(value: bool) -> None:
    if value:
        typer.echo("\n".join(list_models()))
        raise typer.Exit()


def train(
    data: Annotated[str | None, typer.Argument(help="Training data; default --data / PUDRT_DATA / embedded.")]
    = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Model file: .pt, .safetensors, .ts or .pt2.")]
    = Path("model.pt"),
    arch: Annotated[str, typer.Option(help="Architecture name (--list-archs).")] = "resnet9w16",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 15,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 256,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = TrainConfig.lr,
    schedule: Annotated[str, typer.Option(help="onecycle or cosine.")] = "onecycle",
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay.")] = 5e-4,
    bf16: Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="bf16 autocast (default: where native).")]
    = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads (default: one per core).")] = None,
    mean: Annotated[str | None, typer.Option(help="Input normalisation mean, per channel (default CIFAR-10).")]
    = None,
    std: Annotated[str | None, typer.Option(help="Input normalisation std, per channel (default CIFAR-10).")]
    = None,
    eval_data: Annotated[str | None, typer.Option(help="Test data for C-Acc/ASR at the end ('embedded' for "
                                                      "the embedded test split).")] = None,
    trigger: Annotated[str | None, typer.Option(help="Attack name or poison.json for ASR (default: the "
                                                    "training data's poison.json, if any).")] = None,
    image_size: ImageSizeOpt = None,
    data_opt: DataOpt = None,
    list_archs: Annotated[bool, typer.Option("--list-archs", callback=_list_archs, is_eager=True,
                                             help="List architecture names and exit.")] = False,
) -> None:
    """Train a model; with --eval-data, print its clean accuracy and attack success rate."""
    check_output_model(output)
    dataset = dataset_arg(data or data_opt, "train", image_size)
    mean_t, std_t = parse_floats(mean, "--mean"), parse_floats(std, "--std")
    cfg = TrainConfig(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule,
                      weight_decay=weight_decay, bf16=bf16, seed=seed, threads=threads,
                      **({"mean": mean_t} if mean_t else {}), **({"std": std_t} if std_t else {}))
    attack = load_trigger(trigger) if trigger else None
    if attack is None and dataset.poison is not None and "params" in dataset.poison:
        attack = attack_from_params(dataset.poison["params"])
        log.info("using the training data's trigger (%s) for ASR", attack.name)
    if eval_data is None and trigger is not None:
        raise PudrtError("--trigger needs --eval-data: ASR is measured on triggered test images")
    test = None
    if eval_data is not None:
        test = dataset_arg(eval_data, "test", image_size)
        test.check_num_classes(dataset.num_classes)
    typer.echo(f"training {arch} on {dataset.describe()} for {epochs} epochs")
    result = train_model(dataset, cfg, on_epoch=lambda r: typer.echo(
        f"  epoch {r['epoch']:>3}: loss {r['loss']:.4f}  train acc {r['train_acc']:.4f}  ({r['seconds']:.0f} s)"))
    save_model(result.model, output, arch, dataset.num_classes)
    typer.echo(f"saved {output} ({result.seconds:.0f} s" +
               (f", {result.skipped} unreadable samples skipped)" if result.skipped else ")"))
    if test is not None:
        pred, labels = predict(result.model, test)
        line = f"C-Acc {accuracy(pred, labels):.4f}"
        if attack is not None:
            r = backdoor_rates(result.model, test, attack, clean=(pred, labels))
            line += (f"  ASR {r['asr']:.4f} (untriggered {r['asr_untriggered']:.4f}; {attack.name}, target "
                     f"{attack.target})")
        typer.echo(f"{line}  on {test.describe()}")
