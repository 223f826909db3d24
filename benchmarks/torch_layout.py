"""Torch CPU speed of a model built channels-last (what `create_model` returns) against the same model in NCHW.

Both copies hold the same weights and read the same NCHW batch; their runs alternate, `--reps` times, and the
medians and their ratio (NCHW time / channels-last time, above 1: channels-last is faster) are reported, with the
machine beside them, in the "Torch memory layout" section of benchmarks/RESULTS.md.

    python benchmarks/torch_layout.py [--archs resnet8,resnet9w16,preactresnet18] [--reps 7]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks_common import machine_info, replace_section

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "torch_layout.json"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(arch: str, batch: int, reps: int) -> dict:
    import torch

    from pudrt.models import create_model

    torch.manual_seed(0)
    models = {"channels_last": create_model(arch, 10)}
    models["nchw"] = copy.deepcopy(models["channels_last"]).to(memory_format=torch.contiguous_format)
    x = torch.rand(batch, 3, 32, 32)
    times: dict[str, list[float]] = {f"{n}_{k}": [] for n in models for k in ("forward", "forward_backward")}

    def forward(m):
        with torch.no_grad():
            m(x)

    def forward_backward(m):
        m(x.clone().requires_grad_()).sum().backward()

    for m in models.values():  # warm-up: the first call of each picks its kernels
        m.eval()
        forward(m)
        m.train()
        forward_backward(m)
    for _ in range(reps):
        for name, m in models.items():
            m.eval()
            times[f"{name}_forward"].append(timed(lambda m=m: forward(m)))
            m.train()
            times[f"{name}_forward_backward"].append(timed(lambda m=m: forward_backward(m)))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"arch": arch, "batch": batch, "reps": reps, **{f"{k}_s": round(v, 4) for k, v in med.items()},
            "forward_ratio": round(med["nchw_forward"] / med["channels_last_forward"], 2),
            "forward_backward_ratio": round(med["nchw_forward_backward"] / med["channels_last_forward_backward"], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="resnet8,resnet9w16,preactresnet18")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    info = machine_info()
    rows = [measure(a, args.batch, args.reps) for a in args.archs.split(",")]
    for r in rows:
        print(json.dumps(r), flush=True)
    info["load_after"] = round(os.getloadavg()[0], 2)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": info, "rows": rows}, indent=1) + "\n")
    lines = ["## Torch memory layout", "",
             f"`python benchmarks/torch_layout.py` on {info['date']}: {info['cpu']}, {info['cores']} cores, torch "
             f"{info['torch']}, load {info['load_before']} before / {info['load_after']} after. Batch {args.batch} "
             f"of 32×32 images, medians of {args.reps} alternating runs; the ratio is NCHW time / channels-last "
             f"time (above 1: the channels-last model `create_model` builds is faster).", "",
             "| arch | forward NCHW s | forward channels-last s | ratio | fwd+bwd NCHW s | fwd+bwd channels-last s "
             "| ratio |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['nchw_forward_s']} | {r['channels_last_forward_s']} | "
                     f"{r['forward_ratio']} | {r['nchw_forward_backward_s']} | {r['channels_last_forward_backward_s']} "
                     f"| {r['forward_backward_ratio']} |")
    replace_section(HERE / "RESULTS.md", "## Torch memory layout", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
