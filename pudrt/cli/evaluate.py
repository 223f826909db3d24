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
engine or model, at ε=8/255. `--compare OTHER` (repeatable) measures other models or
engines the same way on the same samples and prints one trade-off table
(`pudrt.evaluate.table`), each metric's change against MODEL beside it."""

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
    accuracy,
    adversarial_accuracy,
    agreement,
    backdoor_rates,
    predict,
    square_accuracy,
    trade_off_table,
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
    trigger: Annotated[str | None, typer.Option(help="Attack name or poison.json, for ASR; also reports "
                                                            "the same count on the untriggered images (what ASR "
                                                            "reads with no backdoor) and RA (triggered images "
                                                            "still given their true class).")] = None,
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
                                                     "gradients, and its agreement with the source. With "
                                                     "--compare, it is the source of every engine in the table.")]
    = None,
    square_queries: Annotated[int, typer.Option(help="Also run the Square attack (black box: logits only, so on the "
                                                     "engine itself) with this many queries per image on the "
                                                     "--adv-samples images; 0 skips it.")] = 0,
    compare: Annotated[list[Path] | None, typer.Option(help="Another model or engine to measure the same way on the "
                                                             "same samples (repeatable); prints one trade-off table "
                                                             "with MODEL as the baseline row.")] = None,
) -> None:
    """C-Acc, ASR, adv_acc and engine agreement of a model or engine on test data; with --compare, a trade-off
    table of several, each against the first."""
    if square_queries < 0:
        raise PudrtError(f"--square-queries must be >= 0, got {square_queries}")
    test = dataset_arg(data, split)
    attack = load_trigger(trigger) if trigger else None
    paths = [model, *(compare or [])]
    opts = (arch, num_classes, mean, std, unsafe_pickle)
    with contextlib.ExitStack() as stack:
        nets, rows = [], []
        for path in paths:
            net, engine = stack.enter_context(_logits_fn(path, device, allow_fallback, opts))
            classes = int(net(_first_image(test)).shape[1])
            test.check_num_classes(classes)
            nets.append(net)
            rows.append({"model": str(path), "engine": engine, "data": str(test.root), "samples": len(test),
                         "classes": classes})
        engines = [i for i, net in enumerate(nets) if not isinstance(net, torch.nn.Module)]
        src = _load_source(source, opts, test, [rows[i] for i in engines], paths) if source is not None else None
        for row, net in zip(rows, nets, strict=True):
            del row["classes"]
            pred, labels = predict(net, test)
            row["c_acc"] = accuracy(pred, labels)
            if attack is not None:
                row["attack"] = attack.params()
                row.update(backdoor_rates(net, test, attack, clean=(pred, labels)))
        for i in engines if src is not None else ():
            rows[i]["source"] = str(source)
            rows[i]["vs_source"] = agreement(src, nets[i], test)
        if adv_samples > 0:
            _pgd_rows(rows, nets, engines, source, src, test, adv_samples)
        if square_queries and adv_samples > 0:
            for row, net in zip(rows, nets, strict=True):
                square = square_accuracy(net, test, SQUARE_EPS / 255, square_queries, limit=adv_samples)
                row[f"adv_acc@Square-{square_queries}/{SQUARE_EPS}"] = square["accuracy"]
                row["square_queries"], row["square_median_queries"] = square_queries, square["median_queries"]
    for row in rows:
        _echo_row(row, attack, test, named=len(rows) > 1)
    if engines and src is None and adv_samples > 0:
        typer.echo("(PGD adv_acc of an engine needs the model it was exported from: add --source MODEL; PGD runs on "
                   "its gradients and the engine classifies the examples. --square-queries N attacks the engine "
                   "itself, from its logits)")
    if engines and src is not None and adv_samples > 0:
        typer.echo("(an engine's PGD adv_acc: examples crafted on the source's gradients, classified by the engine)")
    table = trade_off_table(rows) if len(rows) > 1 else None
    if table is not None:
        typer.echo(f"\nTrade-off table; changes in points against the first row, {paths[0]}:\n{table}")
    if output is not None:
        write_json_atomic(output, rows[0] if table is None else {"rows": rows, "table": table})
        typer.echo(f"wrote {output}")


def _load_source(source: Path, opts: tuple, test, engine_rows: list[dict], paths: list[Path]) -> torch.nn.Module:
    """The model the engines were exported from, checked to be a model with the engines' class count."""
    if not engine_rows:
        named = ", ".join(map(str, paths))
        raise PudrtError(f"--source is the model an engine was exported from; {named} "
                         f"{'is a model itself' if len(paths) == 1 else 'are all models themselves'}")
    src = load_model_from_opts(source, *opts).net.eval()
    with torch.no_grad():
        classes = int(src(_first_image(test)).shape[1])
    for row in engine_rows:
        if classes != row["classes"]:
            raise PudrtError(f"{source} has {classes} classes and the engine {row['model']} {row['classes']}: "
                             f"--source must be the model the engine was exported from")
    return src


def _pgd_rows(rows: list[dict], nets: list, engines: list[int], source: Path | None, src, test,
              adv_samples: int) -> None:
    """Each row's adv_acc under the PGD presets: a model's from its own gradients; the engines' (given a source)
    from one PGD run on the source's gradients whose examples every engine classifies, beside the source's own,
    which is also the row of the source file when it is in the table (not attacked a second time)."""
    for steps, eps in PGD_PRESETS:
        key = f"adv_acc@PGD-{steps}/{eps}"
        source_acc = None
        if src is not None and engines:
            judges = {str(i): nets[i] for i in engines} | {"source": src}
            acc = transferred_accuracy(src, judges, test, eps / 255, steps, limit=adv_samples)
            for i in engines:
                rows[i][key], rows[i][f"source_{key}"] = acc[str(i)], acc["source"]
            source_acc = acc["source"]
        for i, (row, net) in enumerate(zip(rows, nets, strict=True)):
            if i in engines:
                continue
            if source_acc is not None and Path(row["model"]).resolve() == source.resolve():
                row[key] = source_acc
            else:
                row[key] = adversarial_accuracy(net, test, eps / 255, steps, limit=adv_samples)


def _echo_row(row: dict, attack, test, named: bool) -> None:
    """One row's numbers as the lines `pudrt evaluate` prints."""
    line = (f"{row['model']}: " if named else "") + f"C-Acc {row['c_acc']:.4f}"
    if attack is not None:
        line += (f"  ASR {row['asr']:.4f} (untriggered {row['asr_untriggered']:.4f}; {attack.name}, target "
                 f"{attack.target})  RA {row['robust_acc']:.4f}")
    for key, value in row.items():
        if key.startswith("adv_acc"):
            line += f"  {key} {value:.4f}"
    typer.echo(f"{line}  on {test.describe()}, run by {row['engine']}")
    if "vs_source" in row:
        vs = row["vs_source"]
        pgd_keys = [key for key in row if key.startswith("adv_acc@PGD")]
        typer.echo(f"vs the source {row['source']}: top-1 agreement {100 * vs['top1_agreement']:.2f}% on the clean "
                   f"test data, max |Δlogit| {vs['max_abs_logit']:.3g}" + "".join(
                       f"; {key} of the source itself {row['source_' + key]:.4f} (same examples)"
                       for key in pgd_keys))
    if "square_median_queries" in row:
        typer.echo(f"Square attack (ε={SQUARE_EPS}/255, black box on {row['engine']}): the images it turned took a "
                   f"median of {row['square_median_queries']:.0f} queries of {row['square_queries']}")


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
