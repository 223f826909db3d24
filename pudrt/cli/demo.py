"""`pudrt demo`: the story so far, end to end, on the embedded CIFAR-10 subset.

Poison the embedded training images with BadNets, train an infected model,
and measure its clean accuracy and attack success rate on the embedded test
images, beside a model trained on the clean images. Purification, scanning
and engine evaluation join the story as those commands land.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pudrt.attacks import ATTACKS, create_attack
from pudrt.attacks.poison import poison_dataset
from pudrt.evaluate import attack_success_rate, clean_accuracy
from pudrt.io import embedded_dataset, open_dataset, write_json_atomic
from pudrt.io.models import save_model
from pudrt.train import TrainConfig, train_model


def demo(
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for the demo's data, models and summary.")]
    = Path("demo-out"),
    attack: Annotated[str, typer.Option(help=f"Attack to plant: {', '.join(ATTACKS)}.")] = "badnets",
    epochs: Annotated[int, typer.Option(help="Training epochs for each model.")] = 15,
    arch: Annotated[str, typer.Option(help="Architecture.")] = "resnet9w16",
) -> None:
    """Run the whole story on the embedded data: poison, train infected and clean models, measure them."""
    spec = create_attack(attack)
    train, test = embedded_dataset("train"), embedded_dataset("test")
    poisoned_dir = out / f"train-{spec.name}"
    if not (poisoned_dir / "poison.json").is_file():
        r = poison_dataset(train, spec, poisoned_dir, "npz")
        typer.echo(f"[1/3] poisoned {len(r.poison_indices)} of {r.written} training images with {spec.name} "
                   f"(target class {spec.target}: {train.classes[spec.target]}) -> {poisoned_dir}")
    else:
        typer.echo(f"[1/3] reusing {poisoned_dir}")
    poisoned = open_dataset(poisoned_dir)
    cfg = TrainConfig(arch=arch, epochs=epochs)
    rows = {}
    for step, (name, data) in enumerate((("infected", poisoned), ("clean", train)), start=2):
        typer.echo(f"[{step}/3] training the {name} model ({arch}, {epochs} epochs)")
        result = train_model(data, cfg)
        save_model(result.model, out / f"{name}.pt", arch, data.num_classes)
        rows[name] = {
            "c_acc": clean_accuracy(result.model, test),
            "asr": attack_success_rate(result.model, test, spec),
            "train_seconds": round(result.seconds, 1),
            "model": str(out / f"{name}.pt"),
        }
    write_json_atomic(out / "summary.json", {"attack": spec.params(), "test": str(test.root), "models": rows})
    typer.echo(f"\n{'model':<10}{'C-Acc':>8}{'ASR':>8}{'train s':>9}")
    for name, r in rows.items():
        typer.echo(f"{name:<10}{r['c_acc']:>8.3f}{r['asr']:>8.3f}{r['train_seconds']:>9.0f}")
    typer.echo(f"\nsummary: {out / 'summary.json'}")
