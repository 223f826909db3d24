"""Torch CPU throughput of inference and input gradients by batch size, for the batch sizes pudrt's loops use.

Scoring (`forward_all`), the metrics (C-Acc, ASR) and the pattern test run the model forward with no gradient;
PGD (purification, target discovery, adv_acc) takes gradients with respect to the input only. Each is timed over
the same `--images` random 32×32 images at each batch size; the batch sizes alternate, `--reps` times, and the
medians are reported as images per second, with the machine beside them, in the "Torch batch size" section of
benchmarks/RESULTS.md.

    python benchmarks/torch_batch.py [--archs resnet8,resnet9w16,preactresnet18] [--images 512] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks_common import machine_info, replace_section

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "torch_batch.json"
BATCHES = (64, 128, 256, 512)


def measure(arch: str, images: int, reps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from pudrt.models import create_model

    torch.manual_seed(0)
    model = create_model(arch, 10).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = torch.rand(images, 3, 32, 32), torch.randint(0, 10, (images,))

    def forward(bs: int) -> None:
        with torch.inference_mode():
            for i in range(0, images, bs):
                model(x[i : i + bs])

    def input_grad(bs: int) -> None:
        for i in range(0, images, bs):
            xi = x[i : i + bs].clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xi), y[i : i + bs]), xi)

    times: dict[str, dict[int, list[float]]] = {"forward": {b: [] for b in BATCHES},
                                                "input_grad": {b: [] for b in BATCHES}}
    for fn in (forward, input_grad):  # warm-up: the first call at each size picks its kernels
        for b in BATCHES:
            fn(b)
    for _ in range(reps):
        for name, fn in (("forward", forward), ("input_grad", input_grad)):
            for b in BATCHES:
                start = time.perf_counter()
                fn(b)
                times[name][b].append(time.perf_counter() - start)
    row = {"arch": arch, "images": images, "reps": reps}
    for name, by_batch in times.items():
        row[name] = {str(b): round(images / statistics.median(v)) for b, v in by_batch.items()}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="resnet8,resnet9w16,preactresnet18")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    info = machine_info()
    rows = []
    for arch in args.archs.split(","):
        rows.append(measure(arch, args.images, args.reps))
        print(json.dumps(rows[-1]), flush=True)
    info["load_after"] = round(os.getloadavg()[0], 2)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": info, "rows": rows}, indent=1) + "\n")
    head = " | ".join(f"batch {b}" for b in BATCHES)
    lines = ["## Torch batch size", "",
             f"`python benchmarks/torch_batch.py` on {info['date']}: {info['cpu']}, {info['cores']} cores, torch "
             f"{info['torch']}, load {info['load_before']} before / {info['load_after']} after. Images per second "
             f"over {args.images} random 32×32 images, medians of {args.reps} alternating runs; forward without "
             f"gradients (scoring, metrics) and the input gradient (one PGD step).", "",
             f"| arch | pass | {head} |", "|---|---|" + "---|" * len(BATCHES)]
    for r in rows:
        for name in ("forward", "input_grad"):
            lines.append(f"| {r['arch']} | {name.replace('_', ' ')} | "
                         + " | ".join(str(r[name][str(b)]) for b in BATCHES) + " |")
    replace_section(HERE / "RESULTS.md", "## Torch batch size", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
