"""`pudrt export MODEL -o FILE`: a verified ONNX graph (forward, gradient, INT8) or TensorRT engine."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from pudrt.cli.common import ModelOpts, dataset_arg, load_model_from_opts
from pudrt.errors import PudrtError
from pudrt.io import iter_batches


def _images(data: str | None, count: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` real images (and labels) of the check data, from `start` on in one fixed shuffle of it: the check,
    calibration and tuning images of one export are disjoint slices."""
    dataset = dataset_arg(data, "test")
    order = np.random.default_rng(0).permutation(len(dataset))
    idx = np.sort(order[start : start + count])
    xs, ys = [], []
    for b in iter_batches(dataset, 256, indices=idx):
        xs.append(b.float())
        ys.append(b.y)
    if not xs:
        raise PudrtError(f"no readable images left in {dataset.root} ({len(dataset)} in all) for the export's "
                         f"check, calibration and tuning sets; pass fewer --check-samples or --calib-samples")
    return torch.cat(xs), torch.cat(ys)


def export(
    model: Annotated[Path, typer.Argument(help="Model file; an .onnx file with --engine trt.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output: .onnx, or .plan with --engine trt.")],
    grad: Annotated[str | None, typer.Option(help="Export a gradient graph instead: ce, kl or pgd.")] = None,
    steps: Annotated[int, typer.Option(help="Unrolled PGD steps for --grad pgd.")] = 7,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 static quantization (QDQ) for CPU scanning.")] = False,
    engine: Annotated[str, typer.Option(help="onnx, or trt to build a TensorRT engine from an ONNX file.")] = "onnx",
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 TensorRT engine.")] = False,
    check_data: Annotated[str | None, typer.Option(help="Real images to check the export on (default: "
                                                       "--data / PUDRT_DATA / the embedded test split).")] = None,
    check_samples: Annotated[int, typer.Option(help="Images to check on.")] = 256,
    atol: Annotated[float, typer.Option(help="Absolute tolerance on logits and features.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Relative tolerance on logits and features.")] = 1e-4,
    min_agreement: Annotated[float, typer.Option(help="Least top-1 agreement an INT8 or FP16 export must "
                                                      "reach.")] = 0.99,
    calib_samples: Annotated[int, typer.Option(help="Calibration images for --int8.")] = 512,
    reduce_range: Annotated[bool | None, typer.Option("--reduce-range/--full-range", help="--int8 with 7-bit "
                                                       "weights (needed where the CPU that runs it lacks VNNI) or "
                                                       "8-bit (default: 7-bit unless this CPU has VNNI).")] = None,
    unsigned_weights: Annotated[bool, typer.Option("--unsigned-weights", help="--int8 with 8-bit unsigned weights: "
                                                   "closer to FP32 on a CPU without VNNI, but slower there.")] = False,
    cascade: Annotated[bool, typer.Option("--cascade", help="--int8 as one file that also re-runs INT8's near "
                                                            "ties (smallest top-2 logit margins) through the float "
                                                            "graph, with a `rerun` output per row.")] = False,
    rerun_share: Annotated[str, typer.Option(help="--cascade's threshold: the top-2 margin under which this share "
                                                  "of the calibration images falls; or 'auto', the least share that "
                                                  "reaches --min-agreement on further images of the check data (not "
                                                  "the check or calibration ones).")] = "0.1",
    keep_convs: Annotated[bool, typer.Option("--keep-convs", help="Keep convolutions on tiny feature maps as "
                                                                  "they are instead of rewriting them as exact "
                                                                  "dense products (faster on CPUs).")] = False,
    arch: ModelOpts.arch = None,
    num_classes: ModelOpts.num_classes = None,
    mean: ModelOpts.mean = None,
    std: ModelOpts.std = None,
    unsafe_pickle: ModelOpts.unsafe_pickle = False,
) -> None:
    """Export a model and check the export against the source on real images; fail if they disagree."""
    from pudrt.engine.export import export_onnx, verify_onnx

    if engine not in ("onnx", "trt"):
        raise PudrtError(f"--engine must be onnx or trt, got {engine!r}")
    if not int8 and (unsigned_weights or reduce_range is not None):
        raise PudrtError("--reduce-range, --full-range and --unsigned-weights choose INT8 weights; add --int8")
    if cascade and not int8:
        raise PudrtError("--cascade joins an INT8 graph to the float one; add --int8")
    share = _rerun_share(rerun_share)
    if int8:
        from pudrt.engine.quantize import check_weight_options

        check_weight_options(reduce_range, unsigned_weights)  # before any export work
    images, labels = _images(check_data, check_samples)
    if engine == "trt":
        return _export_trt(model, output, fp16, images, min_agreement)
    if model.suffix == ".onnx":
        raise PudrtError(f"{model} is already ONNX; use --engine trt to build a TensorRT engine from it")
    if output.suffix != ".onnx":
        raise PudrtError(f"-o {output}: ONNX exports end in .onnx")
    loaded = load_model_from_opts(model, arch, num_classes, mean, std, unsafe_pickle)
    net = loaded.features()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pudrt-export-", dir=output.parent) as t:
        tmp = Path(t) / output.name
        if grad is not None:
            from pudrt.engine.grad import export_grad_graph, verify_grad_graph

            export_grad_graph(net, tmp, images[:4], grad, steps=steps, dense=not keep_convs)
            result = verify_grad_graph(tmp, net, images, labels, grad, steps=steps)
            typer.echo(result.describe())
        elif int8:
            result = _export_int8(net, tmp, Path(t), images, calib_samples, check_data, min_agreement, atol, rtol,
                                  reduce_range, unsigned_weights, keep_convs, cascade, share)
        else:
            export_onnx(net, tmp, images[:4], dense=not keep_convs)
            result = verify_onnx(tmp, net, images, atol=atol, rtol=rtol)
            typer.echo(result.describe())
        if not result.passed:
            raise PudrtError(f"the export does not reproduce {model} within tolerance; nothing was written")
        tmp.replace(output)
    typer.echo(f"wrote {output}")


def _export_int8(net, dst: Path, work: Path, images: torch.Tensor, calib_samples: int, check_data: str | None,
                 min_agreement: float, atol: float, rtol: float, reduce_range: bool | None, unsigned_weights: bool,
                 keep_convs: bool, cascade: bool, rerun_share: float | None):
    """Write the INT8 graph (or, with `cascade`, INT8 joined to the float graph) to `dst`; return the check that
    decides whether it is kept: top-1 agreement with the float export on the check images."""
    from pudrt.engine.cascade import margin_for_agreement, margin_for_share, top2_margin, write_cascade
    from pudrt.engine.export import compare, export_onnx
    from pudrt.engine.quantize import quantize_int8, weight_kind, weights_reduced
    from pudrt.engine.runners import OrtRunner

    parts = work / "parts"  # apart from `dst`, whatever its name
    parts.mkdir()
    fp32, int8, joined = parts / "fp32.onnx", parts / "int8.onnx", parts / "cascade.onnx"
    export_onnx(net, fp32, images[:4], dense=not keep_convs)
    calib, _ = _images(check_data, calib_samples, start=len(images))  # apart from the check images
    quantize_int8(fp32, int8, calib.numpy(), reduce_range=reduce_range, unsigned_weights=unsigned_weights)
    with OrtRunner(fp32, device="cpu") as ref_runner, OrtRunner(int8, device="cpu") as q_runner:
        ref, alone = ref_runner(images), q_runner(images)
        if rerun_share is None:  # 'auto', tuned on images INT8 was not calibrated on: it agrees more on those
            tune, _ = _images(check_data, calib_samples, start=len(images) + len(calib))
            margin, share = margin_for_agreement(q_runner, ref_runner, tune.numpy(), min_agreement)
            rerun_share = float(np.mean(top2_margin(q_runner(calib.numpy())["logits"]) < np.float32(margin)))
            chosen = (f"; the least that reaches {100 * min_agreement:g}% on {len(tune)} other images, where it "
                      f"re-runs {100 * share:.1f}%")
        else:
            margin = margin_for_share(q_runner, calib.numpy(), rerun_share)
            chosen = ""
    write_cascade(int8, fp32, joined, margin, share=rerun_share)
    with OrtRunner(joined, device="cpu") as c_runner:
        both = c_runner(images)
    rerun = both["rerun"]
    # the rows the cascade sent through the float graph must be the float export's, to the export tolerance
    if rerun.any():
        wired = compare({k: v[rerun] for k, v in ref.items()}, {k: both[k][rerun] for k in ref}, atol, rtol)
        if not wired.passed:
            raise PudrtError(f"the cascade's re-run rows differ from the float export ({wired.describe()}); "
                             f"nothing was written")
    need = f"(need top-1 ≥ {100 * min_agreement:g}%)"
    kind = weight_kind(reduce_range, unsigned_weights)
    int8_result = compare(ref, alone, atol=float("inf"), rtol=0.0, min_top1=min_agreement)
    cascade_result = compare(ref, both, atol=float("inf"), rtol=0.0, min_top1=min_agreement)
    typer.echo(f"INT8 ({kind}) vs FP32 {int8_result.describe()}{'' if cascade else ' ' + need}")
    typer.echo(f"INT8 with FP32 re-running its near ties (top-2 margin < {margin:.3g}, the calibration images' "
               f"lowest {100 * rerun_share:.1f}%{chosen}) vs FP32: top-1 agreement {100 * cascade_result.top1:.2f}%, "
               f"{100 * rerun.mean():.1f}% re-run{' ' + need if cascade else ''}")
    if cascade:
        joined.replace(dst)
        return cascade_result
    int8.replace(dst)
    if not int8_result.passed:
        if cascade_result.passed:
            typer.echo("hint: --cascade writes the INT8 graph with that FP32 re-run in one file")
        elif not unsigned_weights and weights_reduced(reduce_range):
            typer.echo("hint: --unsigned-weights keeps all 8 bits without saturating on a CPU without VNNI "
                       "(closer to FP32, slower there); or accept less with --min-agreement")
    return int8_result


def _rerun_share(value: str) -> float | None:
    """--rerun-share: a share in (0, 1), or None for 'auto'."""
    if value.strip().lower() == "auto":
        return None
    try:
        share = float(value)
    except ValueError:
        share = float("nan")
    if not 0 < share < 1:
        raise PudrtError(f"--rerun-share must lie in (0, 1) or be 'auto', got {value!r}")
    return share


def _export_trt(model: Path, output: Path, fp16: bool, images: torch.Tensor, min_agreement: float) -> None:
    from pudrt.engine.export import compare
    from pudrt.engine.runners import OrtRunner, TrtRunner
    from pudrt.engine.tensorrt import build_engine

    if model.suffix != ".onnx":
        raise PudrtError(f"--engine trt builds from an ONNX file; export {model} first (pudrt export -o X.onnx)")
    build_engine(model, output, tuple(images.shape[1:]), fp16=fp16)
    with OrtRunner(model, device="cpu") as ref_runner, TrtRunner(output) as trt_runner:
        ref, got = ref_runner(images), trt_runner(images)
    result = compare(ref, got, atol=1e-2 if fp16 else 1e-3, rtol=1e-2 if fp16 else 1e-3, min_top1=min_agreement)
    typer.echo(f"TensorRT vs ONNX Runtime CPU {result.describe()}")
    if not result.passed:
        output.unlink(missing_ok=True)
        raise PudrtError(f"the TensorRT engine does not reproduce {model}; removed {output}")
    typer.echo(f"wrote {output}")
