"""`pudrt purify MODEL DATA -o OUT`: repair a possibly backdoored model with its own untrusted data.

OUT receives the purified model (same format as MODEL) and its verified ONNX
export, clean_indices.npy / poison_indices.npy / scores.csv for DATA,
target.json (the discovered target class and its evidence), history.json (per
step: pools, losses, and with --eval-data C-Acc, ASR and adv_acc@PGD-7/6),
report.md, and checkpoints/ so that a killed run resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pudrt.attacks import attack_from_params, load_trigger
from pudrt.cli.common import DataOpt, ImageSizeOpt, ModelOpts, dataset_arg, load_model_from_opts
from pudrt.errors import PudrtError

log = logging.getLogger(__name__)


def purify(
    model: Annotated[Path, typer.Argument(help="The possibly infected model: a state dict (.pt) or .safetensors.")],
    data: Annotated[str | None, typer.Argument(help="Its untrusted, labelled training data (default --data / "
                                                    "PUDRT_DATA / embedded).")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")] = Path("purified"),
    method: Annotated[str, typer.Option(help="pud (default), pbe or advrbd.")] = "pud",
    epochs_scale: Annotated[float, typer.Option(help="Multiply every epoch count of the method's schedule "
                                                     "(e.g. 0.1 for a quick run).")] = 1.0,
    eval_data: Annotated[str | None, typer.Option(help="Test data for per-step C-Acc / ASR / adv_acc "
                                                      "('embedded' for the embedded test split).")] = None,
    trigger: Annotated[str | None, typer.Option(help="Attack name or poison.json for ASR (default: DATA's "
                                                    "poison.json, if any). Never used to find the target.")] = None,
    adv_samples: Annotated[int, typer.Option(help="Test samples attacked for adv_acc@PGD-7/6 per step.")] = 1000,
    initial_pool: Annotated[str, typer.Option(help="First clean pool: kl (screened by KL-consistency, the "
                                                   "default) or random (the PUD/PBE authors').")] = "kl",
    target_gate: Annotated[bool, typer.Option(help="PUD: keep the found target class's patch-robust samples out "
                                                   "of the clean pools and unlearn them (pudrt's addition; "
                                                   "--no-target-gate --no-shared-pattern --finish-epochs 0 runs "
                                                   "the authors' PUD).")] = True,
    shared_pattern: Annotated[bool, typer.Option(help="PUD and AdvrBD: if the found target class's images share "
                                                      "an additive pattern that the model reads as a trigger, "
                                                      "train on other classes' images carrying it under their own "
                                                      "labels (pudrt's addition, for clean-label attacks such as "
                                                      "SIG; AdvrBD uses it only for those).")] = True,
    pattern_restore: Annotated[bool, typer.Option(help="PUD and AdvrBD: when nearly every image of the found target "
                                                       "class carries that pattern (a clean-label attack), train on "
                                                       "them with the pattern taken out.")] = True,
    target_fit: Annotated[str, typer.Option(help="PUD: how the found target class is filtered: anchored (a fit on "
                                                 "its rows in the KL-screened first pool, the default) or spectre "
                                                 "(the authors' SPECTRE).")] = "anchored",
    finish_epochs: Annotated[int | None, typer.Option(help="PUD: epochs on the final clean pool after the last "
                                                          "unlearning, learning rate annealed to 0 (default 1; 0 "
                                                          "ends as the authors' PUD does).")] = None,
    finish_adv_weight: Annotated[float | None, typer.Option(help="PUD: share of the finish's loss on PGD-7 "
                                                                 "examples of each batch, the rest on the clean "
                                                                 "batch (default 0.1; 0: a clean finish, as before "
                                                                 "2026-12-01; PGD on every batch makes the finish "
                                                                 "cost about 8 plain epochs).")] = None,
    adv_epochs_later: Annotated[int | None, typer.Option(help="PUD and PBE: adversarial epochs at the start of "
                                                             "every step after the first (default 1, the low end "
                                                             "of the authors' 1-2; the rest of each step is clean "
                                                             "and takes back the robustness; each costs about 8 "
                                                             "plain epochs).")]
    = None,
    relearn_adv_epochs: Annotated[int | None, typer.Option(help="AdvrBD: train the last this many relearning "
                                                               "epochs on PGD examples (pudrt's addition, for "
                                                               "adv_acc; default 1, 0 is the paper's AdvrBD; each "
                                                               "costs about 8 plain epochs).")] = None,
    kl_orientation: Annotated[str | None, typer.Option(help="AdvrBD: where the poisons lie on its patch-KL scale: "
                                                            "auto (read from the found target class, the "
                                                            "default), robust (the paper's: low KL) or fragile "
                                                            "(high KL, as a warping trigger's).")] = None,
    residual_check: Annotated[bool, typer.Option(help="After the run, look for the target again in the purified "
                                                      "model: a class that still stands out means the backdoor "
                                                      "likely persists (costs one more target discovery).")] = True,
    lr: Annotated[float | None, typer.Option(help="Fine-tuning learning rate (default: the method's).")] = None,
    clean_weight: Annotated[float | None, typer.Option(help="Mix this weight of clean-image loss into "
                                                            "adversarial epochs (default: PUD and PBE 0, the "
                                                            "authors' pure PGD fine-tuning; AdvrBD 0.9).")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads (default: one per core).")] = None,
    stop_after: Annotated[int | None, typer.Option(help="Stop after this many steps (resume later).")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore checkpoints in OUT and start over.")] = False,
    no_onnx: Annotated[bool, typer.Option("--no-onnx", help="Skip the ONNX export of the result.")] = False,
    arch: ModelOpts.arch = None,
    num_classes: ModelOpts.num_classes = None,
    mean: ModelOpts.mean = None,
    std: ModelOpts.std = None,
    unsafe_pickle: ModelOpts.unsafe_pickle = False,
    image_size: ImageSizeOpt = None,
    data_opt: DataOpt = None,
) -> None:
    """Purify a model without clean data: PUD by default; the target class is found, never given."""
    from pudrt.purify import Evaluation, PurifyConfig
    from pudrt.purify import purify as run_purify
    from pudrt.purify.report import finish

    # options left unset keep the method's preset (for_method), so only those given are passed
    given = {"clean_weight": clean_weight, "relearn_adv_epochs": relearn_adv_epochs, "lr": lr,
             "adv_epochs_later": adv_epochs_later,
             "finish_epochs": finish_epochs, "finish_adv_weight": finish_adv_weight, "kl_orientation": kl_orientation}
    cfg = PurifyConfig.for_method(method, epochs_scale=epochs_scale, batch_size=batch_size, seed=seed,
                                  initial_pool=initial_pool, target_fit=target_fit, threads=threads,
                                  residual_check=residual_check,
                                  **{k: v for k, v in given.items() if v is not None},
                                  **({} if target_gate else {"target_gate": False}),
                                  **({} if shared_pattern else {"shared_pattern": False}),
                                  **({} if pattern_restore else {"pattern_restore": False}))
    if finish_adv_weight and not cfg.finish_epochs:
        raise PudrtError(f"--finish-adv-weight {finish_adv_weight} weighs the finish's PGD examples, but this run has "
                         f"no finish (--finish-epochs 0, or --method {method}): drop one of the two")
    loaded = load_model_from_opts(model, arch, num_classes, mean, std, unsafe_pickle)
    if loaded.info.format not in ("state_dict", "pickle"):
        raise PudrtError(f"{model}: purify fine-tunes the weights, so it needs a state dict or safetensors file "
                         f"(with --arch if it has no pudrt metadata); {loaded.info.format} models are inference-only")
    dataset = dataset_arg(data or data_opt, "train", image_size)
    evaluation = None
    if eval_data is not None:
        attack = load_trigger(trigger) if trigger else None
        if attack is None and dataset.poison is not None and "params" in dataset.poison:
            attack = attack_from_params(dataset.poison["params"])
        test = dataset_arg(eval_data, "test", image_size)
        test.check_num_classes(loaded.info.num_classes)
        evaluation = Evaluation(test, attack, adv_limit=adv_samples)
    elif trigger is not None:
        raise PudrtError("--trigger needs --eval-data: ASR is measured on triggered test images")
    typer.echo(f"purifying {model} ({loaded.info.arch}) with {cfg.method.upper()} on {dataset.describe()}")
    result = run_purify(loaded.net, dataset, cfg, output, loaded.info.num_classes, evaluation, stop_after, restart)
    for line in finish(result, loaded, model, output, cfg, not no_onnx):
        typer.echo(line)
