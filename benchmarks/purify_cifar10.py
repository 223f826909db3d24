"""Benchmark: purify infected small ResNets on the full CIFAR-10 with PUD, PBE and AdvrBD, on this CPU.

    python benchmarks/purify_cifar10.py --attacks badnets,blend,wanet,sig --methods pud,pbe,advrbd \
        --arch resnet9w16 --train-epochs 15 --epochs-scale pud=0.3,pbe=1,advrbd=1 --resume

For each attack: poison the 50,000 training images at 10% (cached), train the
infected model (cached), measure it, then purify it with each method, without
clean data and without the target class (pudrt finds it). Before/after C-Acc
(10,000 test images), ASR (the 9,000 non-target test images, triggered),
adv_acc@PGD-7/6 (--adv-samples evenly spaced test images), poison-pool
precision/recall against the poison.json ground truth, the discovered target,
and wall time of purification alone. One JSON row per (attack, method) is
appended to benchmarks/results/purify_cifar10.jsonl as soon as it is measured,
and the table in benchmarks/RESULTS.md is rewritten.

A run of every attack and method takes longer than one sitting on a small CPU. `--resume` carries an
interrupted invocation on: the same command, at the same code, skips the (attack, method) rows it already
recorded and resumes a purification from its last step checkpoint; the rows name the invocation, and
RESULTS.md shows its latest complete one as one table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "purify_cifar10.jsonl"
ADV = "adv_acc@PGD-7/6"

# The AdvrBD paper's CIFAR-10 table (ResNet-18, its attacks): the bar the issue sets.
PAPER = "AdvrBD paper, CIFAR-10: BadNets C-Acc 85.72% / ASR 0.00%; average over its attacks 85.14% / 0.53%"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("PUDRT_DATA", str(HERE.parent.parent / "shared" / "data")))
    p.add_argument("--attacks", default="badnets,blend,wanet,sig")
    p.add_argument("--methods", default="pud,pbe,advrbd")
    p.add_argument("--arch", default="resnet9w16")
    p.add_argument("--train-epochs", type=int, default=15)
    p.add_argument("--train-lr", type=float, default=None,
                   help="peak learning rate of the infected (and reference) model's one-cycle schedule "
                        "(default: TrainConfig's, 0.4, tuned for the small ResNets)")
    p.add_argument("--train-batch", type=int, default=None, help="its batch size (default: TrainConfig's, 256)")
    p.add_argument("--epochs-scale", default="0.1",
                   help="every method's epochs times this (0.1), or a scale per method (pud=0.3,pbe=1,advrbd=1; a "
                        "method not named gets 0.1)")
    p.add_argument("--adv-samples", type=int, default=1000)
    p.add_argument("--work", default=str(Path.home() / ".cache" / "pudrt" / "bench"))
    p.add_argument("--label", default="")
    p.add_argument("--per-class", type=int, default=None,
                   help="take this many clean training images per class (a stratified subset, the same every run), "
                        "then poison them at the attack's rate, instead of all 50,000; the test set stays whole")
    p.add_argument("--test-per-class", type=int, default=None,
                   help="measure on this many test images per class (a stratified subset, the same every run) "
                        "instead of all 10,000: for the large models, whose every per-step evaluation costs minutes")
    p.add_argument("--reference", action="store_true",
                   help="also train a model on the same training images without the poisons (cached) and record its "
                        "C-Acc and target-class acc beside the purified model's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="options",
                   help="a purification setting (a PurifyConfig field) for every method, e.g. "
                        "--set shared_pattern=false; repeatable; the row and its output folder name it")
    p.add_argument("--min-asr", type=float, default=0.5,
                   help="skip an attack whose infected model's ASR is below this (the backdoor did not take, so a "
                        "purification row would measure nothing); 0 purifies regardless")
    p.add_argument("--resume", action="store_true",
                   help="carry on an invocation of this same command that was stopped: rows it already recorded are "
                        "kept, not run again, and a purification resumes from its last step checkpoint; only where "
                        "the code (the pudrt package and this script, byte for byte) and torch are those that "
                        "started it, otherwise that part starts over")
    p.add_argument("--tables-only", action="store_true",
                   help="only rewrite the tables in RESULTS.md from the recorded rows, run nothing")
    p.add_argument("--remeasure", action="store_true",
                   help="add ASR's untriggered count and RA to recorded rows made before they were measured, from the "
                        "cached infected models and each run's last checkpoint, then rewrite the tables; a row is "
                        "updated only where its model gives back the recorded C-Acc and ASR exactly (a folder a later "
                        "run overwrote does not)")
    args = p.parse_args()
    if args.tables_only:
        write_results_md()
        return
    if args.remeasure:
        from pudrt.io import resolve_data

        remeasure(resolve_data(args.data, "test"), Path(args.work))
        write_results_md()
        return
    options = parse_options(args.options)
    scales = parse_scales(args.epochs_scale, args.methods.split(","))

    from benchmarks_common import machine_info

    from pudrt.attacks import create_attack
    from pudrt.attacks.poison import poison_dataset
    from pudrt.evaluate import attack_success_rate
    from pudrt.io import open_dataset, resolve_data
    from pudrt.io.models import load_model, save_model
    from pudrt.purify import Evaluation, PurifyConfig, purify
    from pudrt.train import TrainConfig, train_model

    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(PurifyConfig)})
    if unknown:
        raise SystemExit(f"--set: PurifyConfig has no field {', '.join(unknown)}")
    recipe = {k: v for k, v in (("lr", args.train_lr), ("batch_size", args.train_batch)) if v is not None}
    train_cfg = TrainConfig(arch=args.arch, epochs=args.train_epochs, **recipe)
    recipe_tag = _recipe_tag(recipe)
    info = machine_info()
    invocation = invocation_of(args)
    recorded = {(r["attack"], r["method"]) for r in read_rows()
                if (r.get("invocation") or {}).get("id") == invocation["id"]} if args.resume else set()
    print(f"invocation {invocation['id']} (code {invocation['code']})"
          + (f": {len(recorded)} row(s) already recorded" if args.resume else ""), flush=True)
    train = resolve_data(args.data, "train")
    test = resolve_data(args.data, "test")
    if args.test_per_class:
        test = test.per_class(args.test_per_class)
    for name in args.attacks.split(","):
        attack = create_attack(name)
        if all((attack.name, method) in recorded for method in args.methods.split(",")):
            print(f"{attack.name}: every method already recorded by this invocation", flush=True)
            continue
        # A subset is drawn from the clean images and then poisoned, so it holds as many clean images of the target
        # class as of any other. (Rows before 2026-11-30 subset the poisoned set instead, whose target class is
        # half poisons: their target class had half the clean images of the others; README.)
        source = train.per_class(args.per_class) if args.per_class else train
        subset = _subset_tag({"per_class": args.per_class})
        poisoned_dir = Path(args.work) / f"cifar10{subset}-{attack.name}-{attack.ratio}"
        if not (poisoned_dir / "poison.json").is_file():
            poison_dataset(source, attack, poisoned_dir, "npz")
        poisoned = open_dataset(poisoned_dir)
        run = {"attack": attack.name, "per_class": args.per_class, "arch": args.arch,
               "train_epochs": args.train_epochs, "train_recipe": recipe, "options": options}
        model_path = infected_path(Path(args.work), run)
        train_minutes = None
        if not model_path.is_file():
            result = train_model(poisoned, train_cfg)
            save_model(result.model, model_path, args.arch, 10)
            train_minutes = round(result.seconds / 60, 1)
            print(f"trained {model_path.name} in {train_minutes} min", flush=True)
        infected_asr = attack_success_rate(load_model(model_path).net.eval(), test, attack)
        if infected_asr < args.min_asr:
            print(f"skipping {attack.name}: {model_path.name} has ASR {infected_asr:.1%} < --min-asr "
                  f"{args.min_asr:.0%}, so the backdoor did not take and purifying it would measure nothing; train "
                  f"it longer (delete it and pass a larger --train-epochs) or use more data", flush=True)
            continue
        evaluation = Evaluation(test, attack, adv_limit=args.adv_samples)
        reference = None
        if args.reference:
            ref_path = Path(args.work) / f"clean{subset or '-full'}-{args.arch}-{args.train_epochs}ep{recipe_tag}.pt"
            if not ref_path.is_file():
                save_model(train_model(source, train_cfg).model, ref_path, args.arch, 10)
            ref_eval = evaluation(load_model(ref_path).net)
            reference = {"model": ref_path.name, "c_acc": ref_eval["c_acc"], "target_acc": ref_eval["target_class_acc"],
                         "asr": ref_eval["asr"], "asr_untriggered": ref_eval["asr_untriggered"],
                         "adv_acc": ref_eval[ADV]}
            print(f"clean reference {ref_path.name}: C-Acc {reference['c_acc']:.4f}, target-class acc "
                  f"{reference['target_acc']:.4f}, ASR {reference['asr']:.4f} (untriggered "
                  f"{reference['asr_untriggered']:.4f})", flush=True)
        for method in args.methods.split(","):
            if (attack.name, method) in recorded:
                print(f"{attack.name} {method}: already recorded by this invocation", flush=True)
                continue
            infected = load_model(model_path).net
            cfg = PurifyConfig.for_method(method, epochs_scale=scales[method], **options)
            out = purified_dir(Path(args.work), {**run, "method": method, "epochs_scale": scales[method]})
            res, minutes, starts = purify_part(
                lambda restart: purify(infected, poisoned, cfg, out, 10, evaluation, restart=restart),  # noqa: B023
                out, invocation["id"], args.resume)
            after = res.history[-1]["eval"]
            # ASR means little when the model never predicts the target (SIG: neither model recognises a clean
            # airplane), so the target class's own test accuracy is recorded beside it
            target_acc = {"before": res.before["target_class_acc"], "after": after["target_class_acc"]}
            pools = next((r["pools"] for r in reversed(res.history) if r.get("pools")), {})
            gate = next((r["target_gate"] for r in res.history if r.get("target_gate")), None)
            finish = res.history[-1].get("stage") == "finish"
            target_filter = next((r["spectre"] for r in reversed(res.history) if r.get("spectre")), None)
            row = {
                "date": info["date"], "label": args.label, "attack": attack.name, "method": method, "options": options,
                "arch": args.arch, "train_epochs": args.train_epochs, "train_recipe": recipe,
                "epochs_scale": scales[method],
                "train_samples": len(poisoned), "per_class": args.per_class, "test_samples": len(test),
                "train_minutes": train_minutes, "before": res.before, "after": after,
                "target_found": res.target.target_class, "target_true": attack.target,
                "target_acc": target_acc, "reference": reference, "subset": "clean-first" if subset else None,
                "clean_pool": pools.get("clean_pool"),
                "poison_pool": pools.get("poison_pool"),
                "target_gate": gate and {k: gate[k] for k in ("rows", "estimated_precision", "poison_pool", "skipped")
                                              if k in gate},
                "target_filter": target_filter,
                "filter_inverted": [{"step": r["step"], **r["spectre"]["inverted"]} for r in res.history
                                    if r.get("spectre", {}).get("inverted")],
                "before_finish": res.history[-2].get("eval") if finish else None,
                "residual": res.residual and {k: v for k, v in res.residual.items() if k != "statement"},
                "purify_minutes": round(minutes, 1), "machine": info, "commit": git_commit(),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "invocation": {**invocation, "starts": starts},
            }
            print(json.dumps(row), flush=True)
            RESULTS.parent.mkdir(exist_ok=True)
            with open(RESULTS, "a") as f:
                f.write(json.dumps(row) + "\n")
            write_results_md()


def parse_scales(text: str, methods: list[str]) -> dict[str, float]:
    """`--epochs-scale`: one scale for every method ("0.1"), or one per method ("pud=0.3,pbe=1"; others 0.1)."""
    try:
        if "=" not in text:
            return dict.fromkeys(methods, float(text))
        named = {method: float(scale) for method, _, scale in (part.partition("=") for part in text.split(","))}
    except ValueError:
        raise SystemExit(f"--epochs-scale takes a number or METHOD=NUMBER,...; got {text!r}") from None
    unknown = sorted(set(named) - set(methods))
    if unknown:
        raise SystemExit(f"--epochs-scale names {', '.join(unknown)}, which --methods does not run")
    return {method: named.get(method, 0.1) for method in methods}


def parse_options(pairs: list[str]) -> dict:
    """`KEY=VALUE` strings as PurifyConfig keyword arguments; a VALUE that reads as JSON (false, 3, 0.5) is that."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


STAMP = "invocation.json"
"""In a purification's output folder: which invocation started it and how many times."""

_NOT_SETTINGS = ("resume", "tables_only", "remeasure")


def code_digest() -> str:
    """What a row's numbers depend on besides the settings: the imported pudrt package and the benchmark scripts,
    byte for byte, and torch's version (a README or test change leaves it alone; any edit to the code does not)."""
    import torch

    import pudrt

    h = hashlib.sha256(torch.__version__.encode())
    package = Path(pudrt.__file__).resolve().parent
    files = [(f"pudrt/{f.relative_to(package).as_posix()}", f) for f in sorted(package.rglob("*.py"))]
    files += [(f.name, f) for f in (HERE / "purify_cifar10.py", HERE / "benchmarks_common.py")]
    for name, f in files:
        h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def invocation_of(args: argparse.Namespace) -> dict:
    """The invocation's identity: its settings (every option but --resume) and the code. The same command at the same
    code is the same invocation, so `--resume` may carry it on; anything else starts its own."""
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_SETTINGS}
    code = code_digest()
    key = hashlib.sha256(json.dumps({"settings": settings, "code": code}, sort_keys=True).encode()).hexdigest()
    return {"id": key[:12], "code": code, "attacks": args.attacks.split(","), "methods": args.methods.split(",")}


def purify_part(run, out: Path, invocation: str, resume: bool) -> tuple:
    """`run(restart)` (one purification into `out`), resumed from its checkpoints where `resume` is asked and this
    invocation started it, else from the start. Returns the result, the minutes of work it took over all its starts
    (the steps kept from earlier starts, as their checkpoint's clock says, plus this start; the work a killed start
    lost after its last checkpoint is not counted) and the number of starts."""
    import torch

    from pudrt.io.atomic import write_json_atomic
    from pudrt.purify.session import checkpoint_files, worked_seconds

    stamp = out / STAMP
    earlier = json.loads(stamp.read_text()) if stamp.is_file() else {}
    carry_on = resume and earlier.get("id") == invocation
    starts = earlier.get("starts", 0) + 1 if carry_on else 1
    steps = checkpoint_files(out)
    kept = 0.0
    if carry_on and steps:
        kept = worked_seconds(json.loads(torch.load(steps[-1], weights_only=True)["history"]))
    if not carry_on:  # cleared before the stamp is written, so no other run's step ever stands under it
        for f in steps:
            f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stamp, {"id": invocation, "starts": starts})
    t = time.perf_counter()
    result = run(not carry_on)
    return result, (kept + time.perf_counter() - t) / 60, starts


def read_rows() -> list[dict]:
    return [json.loads(line) for line in open(RESULTS) if line.strip()] if RESULTS.is_file() else []


def _recipe_tag(recipe: dict) -> str:
    """The cached models' names say how they were trained where it is not the default recipe."""
    return "".join(f"-{'b' if k == 'batch_size' else k}{v}" for k, v in recipe.items())


def _subset_tag(run: dict) -> str:
    return f"-{run['per_class']}pc-clean" if run.get("per_class") else ""


def infected_path(work: Path, run: dict) -> Path:
    """The cached infected model of a run (a recorded row, or the settings of one about to be)."""
    return work / (f"infected-{run['attack']}{_subset_tag(run)}-{run['arch']}-{run['train_epochs']}ep"
                   f"{_recipe_tag(run.get('train_recipe') or {})}.pt")


def purified_dir(work: Path, run: dict) -> Path:
    """The output folder of a run's purification: its checkpoints, pools and history."""
    named = "".join(f"-{k}={v}" for k, v in sorted((run.get("options") or {}).items()))
    recipe = _recipe_tag(run.get("train_recipe") or {})
    return work / (f"purified-{run['attack']}{_subset_tag(run)}-{run['arch']}{recipe}-{run['method']}-"
                   f"{run['epochs_scale']}{named}")


REMEASURED = ("asr_untriggered", "robust_acc")


def remeasure(test, work: Path) -> None:
    """Add REMEASURED to the rows recorded before they were measured, where the models are still cached in `work`
    (`test`: the test split they were measured on).

    A purified model is its run's last checkpoint (PUD's and PBE's student after the finish, AdvrBD's final model).
    Each is first made to give back its row's recorded C-Acc and ASR, to the count: a folder that a later run with
    the same settings overwrote holds another model, and its row is left as it is.
    """
    import torch

    from pudrt.attacks import create_attack
    from pudrt.evaluate import accuracy, backdoor_rates, predict
    from pudrt.io.atomic import atomic_path
    from pudrt.io.datasets import DecodedImages
    from pudrt.io.models import load_model
    from pudrt.purify.session import checkpoint_files

    rows = [json.loads(line) for line in open(RESULTS) if line.strip()]
    if not test.decoded:  # every model reads it twice
        test = DecodedImages(test, desc="decoding the test data")
    measured: dict[tuple, dict] = {}

    def rates(model_file: Path, checkpoint: Path | None, attack_name: str) -> dict:
        key = (model_file, checkpoint)
        if key not in measured:
            net = load_model(model_file).net
            if checkpoint is not None:
                blob = torch.load(checkpoint, weights_only=True)
                net.load_state_dict(blob["student"] if "student" in blob else blob["model"])
            net.eval()
            clean = predict(net, test)
            measured[key] = {"c_acc": accuracy(*clean),
                             **backdoor_rates(net, test, create_attack(attack_name), clean=clean)}
        return measured[key]

    def same(recorded: dict, got: dict) -> bool:
        return all(abs(recorded[k] - got[k]) < 1e-6 for k in ("c_acc", "asr"))

    updated = 0
    for r in rows:
        if not (r.get("before") and r.get("after")) or all(k in r["after"] for k in REMEASURED):
            continue
        infected, out = infected_path(work, r), purified_dir(work, r)
        steps = checkpoint_files(out)
        if r.get("test_samples", len(test)) != len(test) or not infected.is_file() or not steps:
            continue
        before, after = rates(infected, None, r["attack"]), rates(infected, steps[-1], r["attack"])
        if not (same(r["before"], before) and same(r["after"], after)):
            print(f"{out.name}: its model is not the one of the row of {r['date']} ({r.get('commit')}); left alone")
            continue
        for recorded, got in ((r["before"], before), (r["after"], after)):
            recorded.update({k: got[k] for k in REMEASURED})
        r["remeasured"] = {"keys": list(REMEASURED), "date": time.strftime("%Y-%m-%d"), "commit": git_commit()}
        updated += 1
        print(f"{out.name} ({r['date']}, {r.get('commit')}): ASR {100 * after['asr']:.2f}%, untriggered "
              f"{100 * after['asr_untriggered']:.2f}%, RA {100 * after['robust_acc']:.1f}%", flush=True)
    if updated:
        with atomic_path(RESULTS) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"remeasured {updated} row(s)")


def git_commit() -> str | None:
    """The checkout's short commit (with "+" when it has uncommitted changes other than the benchmark results this
    script writes itself), so rows from older code can be told apart; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)benchmarks/results", ":(top,exclude)benchmarks/RESULTS.md"],
                               cwd=HERE, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def asr_cell(before: dict, after: dict, reference: dict | None = None) -> str:
    """ASR before → after, the after in hundredths (its target is a line at 2%), with its untriggered count where
    it was measured (an ASR at or under that is the model's own errors, not the trigger's doing) and, where the
    row has one, the clean-trained model's ASR: what the trigger reads on a model that never saw a poison."""
    if after.get("asr") is None:
        return f"{_pct(before.get('asr'))}→-"
    notes = []
    if after.get("asr_untriggered") is not None:
        notes.append(f"{100 * after['asr_untriggered']:.2f} untriggered")
    if (reference or {}).get("asr") is not None:
        notes.append(f"clean model {100 * reference['asr']:.2f}")
    note = f" ({'; '.join(notes)})" if notes else ""
    return f"{_pct(before.get('asr'))}→{100 * after['asr']:.2f}{note}"


def subset_note(row: dict) -> str:
    """The subset, and the infected model's epochs where they are not the default 15."""
    notes = []
    if row.get("per_class"):
        notes.append(f"{row['per_class']:,} clean/class, then poisoned" if row.get("subset") == "clean-first"
                     else f"{row['per_class']:,}/class")
    recipe = [f"{row['train_epochs']} epochs"] if row.get("train_epochs", 15) != 15 else []
    recipe += [f"{'batch' if key == 'batch_size' else key} {value}" for key, value in
               (row.get("train_recipe") or {}).items()]
    if recipe:
        notes.append(f"infected model {', '.join(recipe)}")
    if row.get("test_samples", 10_000) != 10_000:
        notes.append(f"measured on {row['test_samples']:,} test images")
    return f" ({', '.join(notes)})" if notes else ""


def options_note(row: dict) -> str:
    """The row's --set options and its --label (which names what a one-off run changed outside the options)."""
    notes = [f"{k}={json.dumps(v)}" for k, v in sorted((row.get("options") or {}).items())]
    notes += [f"“{row['label']}”"] if row.get("label") else []
    return f" ({', '.join(notes)})" if notes else ""


def residual_note(res: dict | None) -> str:
    """The found target's evidence before → after purification and what discovery names in the purified model."""
    if not res:
        return "-"
    named = "none" if res["named_after"] is None else f"class {res['named_after']}"
    if "discovery_after" not in res:  # rows before 2026-11-30's behaviour evidence: discovery's scores only
        return f"{res['evidence_before']}→{res['evidence_after']}, names {named}"
    verdict = "persists" if res["persists"] else "gone"
    return (f"{res['evidence_before']}→{res['evidence_after']} ({res['discovery_before']}→{res['discovery_after']} "
            f"with outlier mass), names {named}, {verdict}")


ATTACK_ORDER = ("badnets", "blend", "wanet", "sig")
METHOD_ORDER = ("pud", "pbe", "advrbd")


def targets_met(row: dict) -> str:
    """The issue's targets, each yes or no: ASR <= 2%, C-Acc drop <= 3 points, adv_acc above the infected model's."""
    b, a = row["before"], row["after"]
    met = (a["asr"] <= 0.02, b["c_acc"] - a["c_acc"] <= 0.03, a[ADV] > b[ADV])
    marks = ["yes" if m else "**no**" for m in met]
    if not met[0] and a["asr"] <= a.get("asr_untriggered", -1):  # missed, but the trigger adds nothing
        marks[0] = "**no** (untriggered higher)"
    return " / ".join(marks)


def _infected(row: dict) -> tuple:
    """The infected model a run started from, as far as the rows tell: its C-Acc and ASR before purification."""
    return round(row["before"]["c_acc"], 4), round(row["before"]["asr"], 4)


def _setting(row: dict) -> tuple | None:
    """(arch, attack, method, infected model's recipe, schedule) of a finished full-CIFAR-10 row; None for a subset
    or an unfinished row. An infected model trained another way is another model: its recipe is in the key."""
    full = not row.get("per_class") and row.get("test_samples", 10_000) == 10_000
    if not (full and row.get("before") and row.get("after")):
        return None
    recipe = (row.get("train_epochs", 15), json.dumps(row.get("train_recipe") or {}, sort_keys=True))
    return row["arch"], row["attack"], row["method"], recipe, row["epochs_scale"]


def _setting_order(key: tuple) -> tuple:
    """Arch, then attacks and methods in the benchmark's order, then the recipe and the schedule."""
    arch, attack, method, recipe, scale = key
    return (arch, ATTACK_ORDER.index(attack) if attack in ATTACK_ORDER else 99, recipe,
            METHOD_ORDER.index(method) if method in METHOD_ORDER else 99, scale)


def carry_references(rows: list[dict]) -> list[dict]:
    """The rows, each without a clean-trained reference given the latest one recorded for the same clean model and
    test images: the same architecture, training images (subset and recipe), attack and test set. The clean model
    is one cached file per recipe and its measurements are repeatable, so an invocation run without `--reference`
    (it trains nothing it does not need) still shows the bar its infected model is judged against."""

    def clean_model(r: dict) -> tuple:
        return (r["arch"], r["attack"], r.get("per_class"), r.get("subset"), r.get("train_epochs", 15),
                json.dumps(r.get("train_recipe") or {}, sort_keys=True), r.get("test_samples", 10_000))

    latest = {clean_model(r): r["reference"] for r in rows if r.get("reference")}
    return [r if r.get("reference") or clean_model(r) not in latest else {**r, "reference": latest[clean_model(r)]}
            for r in rows]


def summary_lines(rows: list[dict]) -> list[str]:
    """The latest full-CIFAR-10 row of each (arch, attack, method, schedule) at default settings, against the
    targets. Each `--epochs-scale` keeps its own row: a longer schedule is not a newer version of a shorter one
    (on BadNets the full one ended with less adv_acc than a tenth of it). Only runs on the current infected model
    of each attack count (the one the latest run started from, known by its before-metrics): a schedule last run
    on an earlier model, with earlier code, is history, not where things stand."""
    latest: dict[tuple, dict] = {}
    current: dict[tuple, tuple] = {}
    for r in rows:  # rows are appended in time order, so a later one replaces an earlier one
        key = _setting(r)
        if key is not None and not r.get("options"):
            latest[key] = r
            current[(key[0], key[1], key[3])] = _infected(r)
    latest = {key: r for key, r in latest.items() if _infected(r) == current[(key[0], key[1], key[3])]}

    lines = [
        "### Where it stands: full CIFAR-10, the latest run of each attack, method and schedule",
        "",
        "Written from the rows below: for each infected model, attack, method and `--epochs-scale`, the most recent",
        "run on all 50,000",
        "training images and all 10,000 test images at default purification settings. Targets (the issue's): ASR",
        "≤ 2%, C-Acc drop ≤ 3 points, adv_acc above the infected model's (adv_acc is measured on --adv-samples test",
        f"images, 1,000 by default, where 0.1 point is one image). Bar to beat: {PAPER}.",
        "ASR after is in hundredths of a point, with (where measured) its count on the same test images without the",
        "trigger: the share of clean non-target images the model calls the target, which is what ASR reads with no",
        "backdoor at all. Rows made before it was recorded (2026-12-01) were remeasured from their cached models",
        "(`--remeasure`) where those were still the row's; the others have none. \"clean model X\": the ASR of a",
        "model trained on the same images without the poisons (`--reference`), where the row or another run of",
        "the same attack on the same images has one.",
        "",
        "| arch | attack | method | scale | C-Acc before→after | ASR before→after | adv_acc before→after | "
        "target-class acc before→after | poison-pool precision / recall | targets: ASR / C-Acc / adv_acc | min | "
        "date, code |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(latest, key=_setting_order):
        r = latest[key]
        lines.append(f"| {r['arch']} | {r['attack']}{subset_note(r)} | {r['method']} | {r['epochs_scale']} | "
                     f"{outcome_cells(r)} | {r['date']}, {r.get('commit') or 'earlier'} |")
    return lines + [""]


def outcome_cells(r: dict) -> str:
    """C-Acc, ASR, adv_acc and target-class acc before→after, poison-pool precision / recall, the targets and the
    minutes of one row, as table cells."""
    b, a, ta, pp = r["before"], r["after"], r.get("target_acc") or {}, r.get("poison_pool") or {}
    ref = r.get("reference")
    clean = f" (clean {_pct(ref['c_acc'])})" if ref else ""
    return (f"{_pct(b['c_acc'])}→{_pct(a['c_acc'])}{clean} | {asr_cell(b, a, ref)} | "
            f"{_pct(b.get(ADV))}→{_pct(a.get(ADV))} | {_pct(ta.get('before'))}→{_pct(ta.get('after'))} | "
            f"{_pct(pp.get('precision'))} / {_pct(pp.get('recall'))} | {targets_met(r)} | {r['purify_minutes']}")


def invocation_lines(rows: list[dict]) -> list[str]:
    """The latest invocation that recorded every attack × method it was given, as one table: one command, one code
    (however many times `--resume` carried it on). Where a later invocation is still under way, how far it got.
    Empty when no row names its invocation."""
    runs: dict[str, list[dict]] = {}  # in the order of each invocation's latest row
    for r in rows:
        if r.get("invocation") and r.get("before") and r.get("after"):
            key = r["invocation"]["id"]
            runs[key] = [*runs.pop(key, []), r]
    if not runs:
        return []

    def complete(got: list[dict]) -> bool:
        inv = got[-1]["invocation"]
        return {(a, m) for a in inv["attacks"] for m in inv["methods"]} <= {(r["attack"], r["method"]) for r in got}

    order = list(runs)
    done = [i for i in order if complete(runs[i])]
    lines = ["### One invocation: every attack and method of one command, at one code", ""]
    for i in order[order.index(done[-1]) + 1 if done else 0:]:  # the incomplete ones after the latest complete one
        got, inv = runs[i], runs[i][-1]["invocation"]
        lines += [f"Under way: invocation {i} (code {inv['code']}), {len(got)} of "
                  f"{len(inv['attacks']) * len(inv['methods'])} rows recorded; "
                  f"`{got[-1]['command'].replace(' --resume', '')} --resume` at the same code carries it on.", ""]
    if not done:
        return lines
    got = sorted(runs[done[-1]], key=lambda r: (_setting_order((r["arch"], r["attack"], r["method"], 0, 0))))
    first, last = got[0], got[-1]
    starts = sum(r["invocation"]["starts"] for r in got)
    dates = sorted({r["date"] for r in got})
    commits = sorted({r.get("commit") or "?" for r in got})
    command = min((r["command"] for r in got), key=len)
    lines += [
        f"`{command}`: invocation {done[-1]}, code {first['invocation']['code']} (commits "
        f"{', '.join(commits)}: the same package and scripts), {dates[0]}"
        + (f" to {dates[-1]}" if len(dates) > 1 else "") + f", {len(got)} rows from {starts} start(s) of a "
        f"purification; {first['arch']}{subset_note(first)}, "
        f"{sum(r['purify_minutes'] for r in got):.0f} min of purification in all on "
        f"{(last.get('machine') or {}).get('cpu')}. Columns as in the table above.",
        "",
        "| attack | method | scale | C-Acc before→after | ASR before→after | adv_acc before→after | "
        "target-class acc before→after | poison-pool precision / recall | targets: ASR / C-Acc / adv_acc | min | "
        "starts |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in got:
        lines.append(f"| {r['attack']} | {r['method']} | {r['epochs_scale']} | {outcome_cells(r)} | "
                     f"{r['invocation']['starts']} |")
    return lines + [""]


def seed_lines(rows: list[dict]) -> list[str]:
    """Where one attack, method and schedule was run with more than one purification seed (`--set seed=N`, nothing
    else changed) on the current infected model: each seed's outcome and the spread, so a target met once can be
    told from one met every time. Empty when no such group exists."""
    groups: dict[tuple, dict[int, dict]] = {}
    model: dict[tuple, tuple] = {}
    current: dict[tuple, tuple] = {}
    for r in rows:  # in time order: a seed's later row replaces its earlier one
        key, options = _setting(r), r.get("options") or {}
        if key is None or not set(options) <= {"seed"}:
            continue
        if model.get(key) != _infected(r):  # another infected model: the group starts again
            groups[key], model[key] = {}, _infected(r)
        groups[key][int(options.get("seed", 0))] = r
        current[(key[0], key[1], key[3])] = _infected(r)
    groups = {key: seeds for key, seeds in groups.items()
              if len(seeds) > 1 and model[key] == current[(key[0], key[1], key[3])]}
    if not groups:
        return []
    lines = [
        "### Across purification seeds: full CIFAR-10, default settings",
        "",
        "Each (attack, method, schedule) run with more than one `--set seed=N` and nothing else changed, on the same",
        "infected model (seed 0 is the default; its row is the one above). The seed draws target discovery's",
        "samples, the first pool, PGD's random starts, batch order and augmentation. After purification: C-Acc,",
        "ASR (in hundredths of a point: its target is a line at 2%), ASR's count without the trigger (where every",
        "seed has it) and adv_acc as mean (lowest–highest) over the seeds, and in how many seeds every target was",
        "met.",
        "",
        "| arch | attack | method | scale | seeds (code) | C-Acc after | ASR after | ASR untriggered after | "
        "adv_acc after | every target met | minutes (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def spread(values: list[float], digits: int = 1) -> str:  # ASR with 2: its target is a line at 2%
        mean, low, high = (f"{100 * v:.{digits}f}" for v in (sum(values) / len(values), min(values), max(values)))
        return f"{mean} ({low}–{high})"

    for key in sorted(groups, key=_setting_order):
        seeds = groups[key]
        after = [seeds[s]["after"] for s in sorted(seeds)]
        met = sum("**no**" not in targets_met(seeds[s]) for s in seeds)
        codes = ", ".join(f"{s} ({seeds[s].get('commit') or 'earlier'})" for s in sorted(seeds))
        minutes = sum(seeds[s]["purify_minutes"] for s in seeds) / len(seeds)
        untriggered = (spread([a["asr_untriggered"] for a in after], 2)
                       if all("asr_untriggered" in a for a in after) else "-")
        lines.append(
            f"| {key[0]} | {key[1]}{subset_note(seeds[min(seeds)])} | {key[2]} | {key[4]} | {codes} | "
            f"{spread([a['c_acc'] for a in after])} | {spread([a['asr'] for a in after], 2)} | {untriggered} | "
            f"{spread([a[ADV] for a in after])} | {met} of {len(seeds)} | {minutes:.1f} |"
        )
    return lines + [""]


def write_results_md() -> None:
    rows = read_rows()
    carried = carry_references(rows)
    lines = [
        "## Purification (`benchmarks/purify_cifar10.py`)",
        "",
        *summary_lines(carried),
        *invocation_lines(carried),
        *seed_lines(rows),
        "### Every run, oldest first",
        "",
        "Full CIFAR-10 (or the per-class subset the attack column names), attacks at 10% (all-to-one, target 0;",
        "SIG clean-label), no clean data, target class not",
        "given. C-Acc on the 10,000 test images, ASR on the triggered non-target ones (after: in hundredths, with",
        "its count without the trigger where measured, and the clean-trained model's ASR where the row has one),",
        "adv_acc on evenly spaced",
        "test images (PGD-7, ε=6/255, α=ε/5). Target-class acc: on the clean test images of the attack's target",
        'class (recorded from 2026-11-23; "-" before). "(clean X)": a model trained on the same images without the',
        "poisons (`--reference`), the fair bar for the purified model's target-class acc, since poisons labelled with",
        "the target teach the infected model to answer it more often. A subset named \"N/class\" (before 2026-11-30)",
        "was drawn from the poisoned set, whose target class is half poisons, so it had half the clean target-class",
        "images of the other classes; \"N clean/class, then poisoned\" is drawn first and then poisoned.",
        "Pools against poison.json. Residual: target discovery on the",
        "purified model (from 2026-11-30, where a target was found): the target's evidence before→after and the class",
        "discovery names in the purified model. Rows written after the full-set AdvrBD row of 2026-11-30 show the",
        "verdict's behaviour evidence (discovery.RESIDUAL_SIGNALS; with the features' outlier mass in brackets) and",
        "whether the backdoor persists; older rows show discovery's full scores, where naming the target again meant",
        "it persists (a false alarm on that AdvrBD row: README). Minutes:",
        "purification alone (with the residual check from 2026-11-30), on this 2-core CPU. The epoch schedule is the",
        f"authors' times `epochs_scale`. Bar to beat: {PAPER}.",
        "",
        "| date | attack | method | arch | scale | C-Acc before→after | ASR before→after | adv_acc before→after | "
        "target found | target-class acc before→after | clean-pool precision / recall | "
        "poison-pool precision / recall | residual | min | code |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, a = r["before"] or {}, r["after"] or {}
        cp, pp, ta = r.get("clean_pool") or {}, r.get("poison_pool") or {}, r.get("target_acc") or {}
        ref = r.get("reference") or {}
        ref_c, ref_t = ((f" (clean {_pct(ref['c_acc'])})", f" (clean {_pct(ref['target_acc'])})") if ref
                        else ("", ""))
        lines.append(
            f"| {r['date']} | {r['attack']}{subset_note(r)} | {r['method']}{options_note(r)} | {r['arch']} | "
            f"{r['epochs_scale']} | "
            f"{_pct(b.get('c_acc'))}→{_pct(a.get('c_acc'))}{ref_c} | {asr_cell(b, a, ref)} | "
            f"{_pct(b.get(ADV))}→{_pct(a.get(ADV))} | {r['target_found']} (true {r['target_true']}) | "
            f"{_pct(ta.get('before'))}→{_pct(ta.get('after'))}{ref_t} | "
            f"{_pct(cp.get('precision'))} / {_pct(cp.get('recall'))} | {_pct(pp.get('precision'))} / "
            f"{_pct(pp.get('recall'))} | {residual_note(r.get('residual'))} | {r['purify_minutes']} | "
            f"{r.get('commit') or 'earlier'} |"
        )
    machines: dict[str, list[str]] = {}
    for r in rows:  # minutes compare only within one machine
        m = r.get("machine") or {}
        machines.setdefault(f"{m.get('cpu')} ({m.get('cores')} cores), torch {m.get('torch')}", []).append(r["date"])
    lines += ["", "Machines: " + "; ".join(f"{name}: rows of {min(d)} to {max(d)}" for name, d in machines.items())
              + "."]
    from benchmarks_common import replace_section

    replace_section(HERE / "RESULTS.md", "## Purification", "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
