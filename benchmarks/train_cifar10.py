"""Benchmark: train an infected small ResNet on the full CIFAR-10 (BadNets, 10%) on this CPU.

    python benchmarks/train_cifar10.py --data ../shared/data --arch resnet8w32 --epochs 14

Poisons the full training set once (cached under --work), trains with pudrt's
trainer, and measures C-Acc and ASR on the full test set. Appends a row to
benchmarks/results/train_cifar10.jsonl with the machine and versions, and
rewrites the table in benchmarks/RESULTS.md. Target (issue 2): C-Acc >= 85%,
ASR >= 95% in under 15 minutes of training on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("PUDRT_DATA", str(HERE.parent.parent / "shared" / "data")))
    p.add_argument("--arch", default="resnet8w32")
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.4)
    p.add_argument("--attack", default="badnets")
    p.add_argument("--work", default=str(Path.home() / ".cache" / "pudrt" / "bench"))
    p.add_argument("--label", default="")
    args = p.parse_args()

    import onnxruntime
    from benchmarks_common import machine_info

    from pudrt.attacks import create_attack
    from pudrt.attacks.poison import poison_dataset
    from pudrt.evaluate import attack_success_rate, clean_accuracy
    from pudrt.io import open_dataset, resolve_data
    from pudrt.train import TrainConfig, train_model

    info = {**machine_info(), "onnxruntime": onnxruntime.__version__}
    attack = create_attack(args.attack)
    train = resolve_data(args.data, "train")
    test = resolve_data(args.data, "test")
    poisoned_dir = Path(args.work) / f"cifar10-{attack.name}-{attack.ratio}"
    if not (poisoned_dir / "poison.json").is_file():
        t = time.perf_counter()
        poison_dataset(train, attack, poisoned_dir, "npz")
        print(f"poisoned {len(train)} images in {time.perf_counter() - t:.0f} s", flush=True)
    poisoned = open_dataset(poisoned_dir)
    cfg = TrainConfig(arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    result = train_model(poisoned, cfg, on_epoch=lambda r: print(
        f"epoch {r['epoch']}: loss {r['loss']:.3f} acc {r['train_acc']:.3f} {r['seconds']:.0f}s", flush=True))
    c_acc = clean_accuracy(result.model, test)
    asr = attack_success_rate(result.model, test, attack)
    row = {
        "date": info["date"],
        "label": args.label,
        "arch": args.arch,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "attack": attack.name,
        "ratio": attack.ratio,
        "train_samples": len(poisoned),
        "test_samples": len(test),
        "c_acc": round(c_acc, 4),
        "asr": round(asr, 4),
        "train_minutes": round(result.seconds / 60, 2),
        "bf16": cfg.bf16,
        "machine": info,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    print(json.dumps(row), flush=True)
    out = HERE / "results" / "train_cifar10.jsonl"
    out.parent.mkdir(exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    write_results_md()


def write_results_md() -> None:
    rows = [json.loads(line) for line in open(HERE / "results" / "train_cifar10.jsonl") if line.strip()]
    lines = [
        "## Training an infected model (`benchmarks/train_cifar10.py`)",
        "",
        "Full CIFAR-10 (50,000 train / 10,000 test), BadNets 3×3 at 10%, target 0. C-Acc on the clean",
        "test set; ASR on triggered test images whose true class is not the target. Wall time of training",
        "alone (poisoning is done once and cached). Target: C-Acc ≥ 85%, ASR ≥ 95%, under 15 minutes.",
        "",
        "| date | arch | epochs | C-Acc | ASR | train min | CPU (cores) | torch | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["machine"]
        lines.append(
            f"| {r['date']} | {r['arch']} | {r['epochs']} | {100 * r['c_acc']:.2f}% | {100 * r['asr']:.2f}% | "
            f"{r['train_minutes']:.1f} | {m['cpu']} ({m['cores']}) | {m['torch']} | `{r['command']}` |"
        )
    from benchmarks_common import replace_section

    replace_section(HERE / "RESULTS.md", "## Training an infected model", "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
