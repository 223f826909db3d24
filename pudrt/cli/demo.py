"""`pudrt demo`: the story so far, end to end, on the embedded CIFAR-10 subset.

Poison the embedded training images with BadNets, train an infected model
and a model on the clean images, then purify the infected model with PUD
using only the poisoned training images (no clean data, target not given).
Each model's clean accuracy, attack success rate and adversarial accuracy
(PGD-7, eps 6/255) are measured on the embedded test images. Scanning and
engine evaluation join the story as those commands land.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pudrt.attacks import ATTACKS, create_attack
from pudrt.attacks.poison import poison_dataset
from pudrt.io import embedded_dataset, open_dataset, write_json_atomic
from pudrt.io.models import load_model, save_model
from pudrt.train import TrainConfig, train_model

ADV = "adv_acc@PGD-7/6"


def demo(
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for the demo's data, models and summary.")]
    = Path("demo-out"),
    attack: Annotated[str, typer.Option(help=f"Attack to plant: {', '.join(ATTACKS)}.")] = "badnets",
    epochs: Annotated[int, typer.Option(help="Training epochs for each model.")] = 15,
    arch: Annotated[str, typer.Option(help="Architecture.")] = "resnet9w16",
    purify_scale: Annotated[float, typer.Option(help="--epochs-scale of the PUD run (0 skips purification).")]
    = 0.1,
    adv_samples: Annotated[int, typer.Option(help="Test images attacked for adv_acc@PGD-7/6.")] = 500,
    per_class: Annotated[int | None, typer.Option(
        help="Use this many of the 1,000 embedded training images per class (a seeded stratified subset) for a "
             "quicker look; all of them by default.")] = None,
) -> None:
    """Run the whole story on the embedded data: poison, train infected and clean models, purify, measure."""
    from pudrt.purify import Evaluation, PurifyConfig, purify
    from pudrt.purify.report import finish

    spec = create_attack(attack)
    total = 4 if purify_scale > 0 else 3
    train, test = embedded_dataset("train"), embedded_dataset("test")
    if per_class is not None:
        train = train.per_class(per_class)
    poisoned_dir = out / (f"train-{spec.name}" if per_class is None else f"train-{spec.name}-{per_class}pc")
    if not (poisoned_dir / "poison.json").is_file():
        r = poison_dataset(train, spec, poisoned_dir, "npz")
        typer.echo(f"[1/{total}] poisoned {len(r.poison_indices)} of {r.written} training images with {spec.name} "
                   f"(target class {spec.target}: {train.classes[spec.target]}) -> {poisoned_dir}")
    else:
        typer.echo(f"[1/{total}] reusing {poisoned_dir}")
    poisoned = open_dataset(poisoned_dir)
    cfg = TrainConfig(arch=arch, epochs=epochs)
    evaluation = Evaluation(test, spec, adv_limit=adv_samples)
    rows = {}
    for step, (name, data) in enumerate((("infected", poisoned), ("clean", train)), start=2):
        typer.echo(f"[{step}/{total}] training the {name} model ({arch}, {epochs} epochs)")
        result = train_model(data, cfg)
        save_model(result.model, out / f"{name}.pt", arch, data.num_classes)
        rows[name] = {**evaluation(result.model), "seconds": round(result.seconds, 1),
                      "model": str(out / f"{name}.pt")}
    if purify_scale > 0:
        typer.echo(f"[4/{total}] purifying the infected model with PUD (--epochs-scale {purify_scale}) on the "
                   f"poisoned training images alone; the target class is not given")
        loaded = load_model(out / "infected.pt")
        pcfg = PurifyConfig.for_method("pud", epochs_scale=purify_scale)
        result = purify(loaded.net, poisoned, pcfg, out / "purified", poisoned.num_classes, evaluation,
                        restart=True)
        for line in finish(result, loaded, out / "infected.pt", out / "purified", pcfg):
            typer.echo(f"  {line}")
        rows["purified"] = {**result.history[-1]["eval"], "seconds": round(result.seconds, 1),
                            "model": str(out / "purified" / "model.pt"), "target_found": result.target.target_class}
    write_json_atomic(out / "summary.json", {"attack": spec.params(), "test": str(test.root), "models": rows})
    target = None if spec.all_to_all else test.classes[spec.target]
    extra = f"{target[:9]:>10}{'answers':>9}" if target else ""
    typer.echo(f"\n{'model':<10}{'C-Acc':>8}{'ASR':>8}{'untrig.':>9}{'adv_acc':>9}{extra}{'seconds':>9}")
    for name, r in rows.items():
        extra = f"{r['target_class_acc']:>10.3f}{r['target_share']:>9.3f}" if target else ""
        typer.echo(f"{name:<10}{r['c_acc']:>8.3f}{r['asr']:>8.3f}{r['asr_untriggered']:>9.3f}{r[ADV]:>9.3f}{extra}"
                   f"{r['seconds']:>9.0f}")
    typer.echo(f"\nuntrig.: ASR's count on the test images without the trigger (what ASR reads with no backdoor); "
               f"adv_acc is {ADV} on {adv_samples} test images; seconds are training or purification time.")
    if target:
        typer.echo(f"{target[:9]}: accuracy on the test images of the target class; answers: the share of all test "
                   f"images a model calls {target}. Poisons labelled {target} teach a model to answer it more often, "
                   f"which lifts its {target} accuracy" + (": compare the purified model's with the clean one's."
                                                            if "purified" in rows else "."))
    typer.echo(f"summary: {out / 'summary.json'}")
