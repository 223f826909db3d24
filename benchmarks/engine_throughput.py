"""Benchmark: torch eager vs ONNX Runtime (fp32, int8) forward, and torch autograd vs the ORT gradient graph.

    python benchmarks/engine_throughput.py [--batch 256] [--repeats 7] [--archs resnet8 preactresnet18 resnet18]

All competitors run in this one process, interleaved round by round on the same
real CIFAR-10 images (the embedded test split), so a noisy shared machine slows
them alike; each number is the median over rounds, and the ratios are medians of
per-round ratios. Appends the run to benchmarks/results/engine_throughput.jsonl and
rewrites the engine section of benchmarks/RESULTS.md from every run recorded there,
one table per run with its machine and versions (INT8 speed and agreement depend on
the CPU's instruction set, so earlier machines' tables are kept).

Targets (issue 3, 2-core CPU, batch 256): ORT fp32 ≥ 2× torch eager for resnet18;
ORT int8 ≥ 4× torch eager with ≥ 99% top-1 agreement; ORT gradient graph ≥ 1.2×
torch autograd.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
TRAIN_EPOCHS = {"resnet8": 3, "resnet18": 2, "preactresnet18": 1}
RERUN_SHARE = 0.1
"""The INT8 cascade (pudrt.engine.cascade) re-runs through fp32 the rows whose INT8 top-2 logit margin is below
the calibration images' RERUN_SHARE quantile."""
TARGET, TUNE = 0.99, 512
"""The tuned cascade (`--rerun-share auto`) re-runs the least share that reaches TARGET agreement on the first TUNE
held-out images; its agreement is measured on the other held-out images."""


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--archs", nargs="+", default=["resnet8", "preactresnet18", "resnet18"])
    args = p.parse_args()

    from pudrt.io import embedded_dataset, iter_batches
    from pudrt.train import set_threads

    threads = set_threads(None)
    test = embedded_dataset("test")
    batches = iter_batches(test, args.batch, workers=0)
    x, y = (lambda b: (b.float(), b.y))(next(batches))
    calib = next(batches).float()
    rest = list(batches)
    held_out, held_out_y = torch.cat([b.float() for b in rest]), torch.cat([b.y for b in rest])
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(arch, Path(tmp), x, y, calib, held_out, held_out_y, threads, args) for arch in args.archs]
    out = HERE / "results" / "engine_throughput.jsonl"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps({"machine": machine(threads), "rows": rows}) + "\n")
    write_results_md([json.loads(line) for line in out.read_text().splitlines() if line.strip()])


def measure(arch, tmp, x, y, calib, held_out, held_out_y, threads, args) -> dict:
    """Time every competitor on one architecture, interleaved round by round."""
    from pudrt.engine import OrtRunner, export_onnx
    from pudrt.engine.cascade import margin_for_agreement, margin_for_share, write_cascade
    from pudrt.engine.grad import export_grad_graph
    from pudrt.engine.quantize import quantize_int8, weights_reduced
    from pudrt.errors import PudrtError
    from pudrt.io import embedded_dataset
    from pudrt.models import FeatureClassifier
    from pudrt.train import TrainConfig, train_model

    torch.manual_seed(0)
    # Briefly trained on the embedded data, so INT8 agreement is measured on a model with real margins
    # (an untrained one has near-ties everywhere); speed does not depend on the weights.
    epochs = TRAIN_EPOCHS.get(arch, 1)
    model = train_model(embedded_dataset("train"),
                        TrainConfig(arch=arch, epochs=epochs, lr=0.1, batch_size=128, augment=False)).model
    model.eval()
    pair = FeatureClassifier(model).eval()
    for p_ in pair.parameters():
        p_.requires_grad_(False)
    fp32 = export_onnx(model, tmp / f"{arch}.onnx", x[:4])
    int8 = quantize_int8(fp32, tmp / f"{arch}-int8.onnx", calib.numpy())
    int8u = quantize_int8(fp32, tmp / f"{arch}-int8u.onnx", calib.numpy(), unsigned_weights=True)
    ce = export_grad_graph(model, tmp / f"{arch}-ce.onnx", x[:4], "ce")
    ort32, ort8, ort8u, ortg = (OrtRunner(f, device="cpu", threads=threads) for f in (fp32, int8, int8u, ce))
    xn, yn = x.numpy(), y.numpy()
    # INT8, then fp32 for the rows whose INT8 top-2 margin is among the calibration images' lowest RERUN_SHARE:
    # the one file `pudrt export --int8 --cascade` writes
    joined = write_cascade(int8, fp32, tmp / f"{arch}-cascade.onnx", margin_for_share(ort8, calib.numpy(),
                                                                                        RERUN_SHARE))
    cascade = OrtRunner(joined, device="cpu", threads=threads)
    try:  # the least re-run share reaching TARGET on TUNE held-out images (`--rerun-share auto`)
        tuned_margin, tuned_share = margin_for_agreement(ort8, ort32, held_out[:TUNE].numpy(), TARGET)
        tuned = OrtRunner(write_cascade(int8, fp32, tmp / f"{arch}-tuned.onnx", tuned_margin), device="cpu",
                          threads=threads)
    except PudrtError as err:
        print(f"{arch}: no tuned cascade ({err})", flush=True)
        tuned = None

    def torch_forward():
        with torch.no_grad():
            pair(x)

    def torch_grad():
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(pair(xr)[0], y, reduction="sum"), xr)

    competitors = {
        "torch_eager": torch_forward,
        "ort_fp32": lambda: ort32(xn),
        "ort_int8": lambda: ort8(xn),
        "ort_int8_unsigned": lambda: ort8u(xn),
        "ort_int8_cascade": lambda: cascade(xn),
        **({"ort_int8_cascade_tuned": lambda: tuned(xn)} if tuned is not None else {}),
        "torch_autograd": torch_grad,
        "ort_grad_graph": lambda: ortg(xn, label=yn),
    }
    for fn in competitors.values():  # warm-up: allocator, thread pools, ORT's first-run setup
        fn()
    times = {k: [] for k in competitors}
    for _ in range(args.repeats):
        for name, fn in competitors.items():
            times[name].append(timed(fn))

    def ratio(a, b):
        return statistics.median(tb / ta for ta, tb in zip(times[a], times[b], strict=True))

    with torch.no_grad():
        ref_pred = pair(held_out)[0].argmax(1).numpy()

    def agreement(runner, start: int = 0) -> float:
        pred = np.concatenate([runner(held_out[i : i + 256].numpy())["logits"].argmax(1)
                               for i in range(start, len(held_out), 256)])
        return round(float((pred == ref_pred[start:]).mean()), 4)

    held_out_rerun = np.concatenate([cascade(held_out[i : i + 256].numpy())["rerun"]
                                     for i in range(0, len(held_out), 256)])
    row = {
        "train_epochs": epochs,
        "arch": arch,
        "batch": args.batch,
        "img_per_s": {k: round(args.batch / statistics.median(v), 1) for k, v in times.items()},
        "ort_fp32_vs_torch": round(ratio("ort_fp32", "torch_eager"), 2),
        "ort_int8_vs_torch": round(ratio("ort_int8", "torch_eager"), 2),
        "ort_grad_vs_autograd": round(ratio("ort_grad_graph", "torch_autograd"), 2),
        "int8_top1_agreement": agreement(ort8),
        "int8_weight_bits": 7 if weights_reduced(None) else 8,
        "ort_int8_unsigned_vs_torch": round(ratio("ort_int8_unsigned", "torch_eager"), 2),
        "int8_unsigned_top1_agreement": agreement(ort8u),
        "ort_int8_cascade_vs_torch": round(ratio("ort_int8_cascade", "torch_eager"), 2),
        "int8_cascade_top1_agreement": agreement(cascade),
        "int8_cascade_rerun_share": round(float(held_out_rerun.mean()), 4),
        "int8_agreement_images": int(len(held_out)),
        **({"ort_int8_cascade_tuned_vs_torch": round(ratio("ort_int8_cascade_tuned", "torch_eager"), 2),
            "int8_cascade_tuned_top1_agreement": agreement(tuned, TUNE),
            "int8_cascade_tuned_rerun_share": round(float(np.concatenate(
                [tuned(held_out[i : i + 256].numpy())["rerun"] for i in range(TUNE, len(held_out), 256)]).mean()), 4),
            "int8_cascade_tuned_share_on_tuning_images": round(tuned_share, 4)} if tuned is not None else {}),
        "test_accuracy": round(float((ref_pred == held_out_y.numpy()).mean()), 4),
    }
    print(json.dumps(row), flush=True)
    return row


def machine(threads: int) -> dict:
    import onnxruntime
    from benchmarks_common import machine_info

    return {**machine_info(), "threads": threads, "onnxruntime": onnxruntime.__version__}


def write_results_md(runs: list[dict]) -> None:
    from benchmarks_common import replace_section

    lines = [
        "## Engine throughput (`benchmarks/engine_throughput.py`)",
        "",
        "Batch of real CIFAR-10 test images; medians over rounds that interleave all competitors in one "
        "process. Speed-ups are medians of per-round ratios. INT8 agreement: top-1 of the INT8 graph vs the "
        "float model on the other 1,488 embedded test images; each model is first trained briefly on the "
        "embedded training images (epochs in the table), so its predictions have real margins; their accuracy "
        "on those images is in the first column. INT8 keeps the classifier head in float; its weights are 7-bit "
        "on a CPU without VNNI (`pudrt.engine.quantize`); the unsigned column is `--unsigned-weights` (8-bit, "
        "never saturating; a dash in runs made before it was measured). The cascade column is INT8 with the rows "
        "whose INT8 top-2 logit margin falls below the calibration images' lowest 10% run again through fp32 "
        "(`pudrt.engine.cascade`), with the share of held-out images re-run; runs up to 2026-11-30 17:00 timed it as "
        "two sessions joined in Python, later ones as the single ONNX file `pudrt export --int8 --cascade` "
        "writes. The tuned cascade column (from the second run of 2026-11-30 on) re-runs the least share that "
        "reaches 99% agreement on the first 512 held-out images (`--rerun-share auto`), and its agreement and share "
        "are measured on the other 976. Convolutions on maps no larger than "
        "their kernel are exported as dense matrix products (`pudrt.engine.dense`). One table per run, oldest "
        "first.",
    ]
    for run in runs:
        info, rows = run["machine"], run["rows"]
        vnni = {True: "VNNI", False: "no VNNI"}.get(info.get("vnni"), "VNNI not recorded")
        bits = sorted({r.get("int8_weight_bits", 8) for r in rows})
        lines += [
            "",
            f"### {info['date']}, {info['cpu']} ({info['cores']} cores, {info['threads']} threads, {vnni})",
            "",
            f"torch {info['torch']}, onnxruntime {info['onnxruntime']}, batch {rows[0]['batch']}, INT8 weights "
            f"{'/'.join(map(str, bits))}-bit, load average before the run {info.get('load_before', '?')}.",
            "",
            "| arch (train epochs, test acc) | torch eager img/s | ORT fp32 img/s | ORT int8 img/s | fp32 ×torch "
            "| int8 ×torch | int8 top-1 agreement | int8 unsigned weights ×torch (agreement) "
            "| int8 + fp32 cascade ×torch (agreement, re-run) | cascade tuned for 99% ×torch (agreement, re-run) "
            "| torch autograd img/s | ORT grad graph img/s | grad ×autograd |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            s = r["img_per_s"]
            epochs = r.get("train_epochs", TRAIN_EPOCHS.get(r["arch"]))
            acc = f", {100 * r['test_accuracy']:.1f}%" if "test_accuracy" in r else ""
            unsigned = (f"{r['ort_int8_unsigned_vs_torch']:.2f} ({100 * r['int8_unsigned_top1_agreement']:.2f}%)"
                        if "int8_unsigned_top1_agreement" in r else "-")
            cascade = (f"{r['ort_int8_cascade_vs_torch']:.2f} ({100 * r['int8_cascade_top1_agreement']:.2f}%, "
                       f"{100 * r['int8_cascade_rerun_share']:.1f}%)" if "int8_cascade_top1_agreement" in r else "-")
            tuned = (f"{r['ort_int8_cascade_tuned_vs_torch']:.2f} "
                     f"({100 * r['int8_cascade_tuned_top1_agreement']:.2f}%, "
                     f"{100 * r['int8_cascade_tuned_rerun_share']:.1f}%)" if "int8_cascade_tuned_top1_agreement" in r
                     else "-")
            lines.append(
                f"| {r['arch']} ({epochs}{acc}) | {s['torch_eager']:.0f} | {s['ort_fp32']:.0f} | "
                f"{s['ort_int8']:.0f} | {r['ort_fp32_vs_torch']:.2f} | {r['ort_int8_vs_torch']:.2f} | "
                f"{100 * r['int8_top1_agreement']:.2f}% | {unsigned} | {cascade} | {tuned} | "
                f"{s['torch_autograd']:.0f} | "
                f"{s['ort_grad_graph']:.0f} | {r['ort_grad_vs_autograd']:.2f} |"
            )
    replace_section(HERE / "RESULTS.md", "## Engine throughput", "\n".join(lines) + "\n")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE))
    main()
