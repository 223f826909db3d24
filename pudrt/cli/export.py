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


def _images(data: str | None, count: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` real images (and labels) from the check data, spread over its classes."""
    dataset = dataset_arg(data, "test")
    rng = np.random.default_rng(offset)
    idx = np.sort(rng.choice(len(dataset), size=min(count, len(dataset)), replace=False))
    xs, ys = [], []
    for b in iter_batches(dataset, 256, indices=idx):
        xs.append(b.float())
        ys.append(b.y)
    if not xs:
        raise PudrtError(f"no readable images in {dataset.root} to check the export with")
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
    from pudrt.engine.export import compare, export_onnx, verify_onnx
    from pudrt.engine.runners import OrtRunner

    if engine not in ("onnx", "trt"):
        raise PudrtError(f"--engine must be onnx or trt, got {engine!r}")
    if not int8 and (unsigned_weights or reduce_range is not None):
        raise PudrtError("--reduce-range, --full-range and --unsigned-weights choose INT8 weights; add --int8")
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
            from pudrt.engine.cascade import CascadeRunner, margin_for_share
            from pudrt.engine.quantize import quantize_int8, weight_kind, weights_reduced

            fp32 = Path(t) / "fp32.onnx"
            export_onnx(net, fp32, images[:4], dense=not keep_convs)
            calib, _ = _images(check_data, calib_samples, offset=1)
            quantize_int8(fp32, tmp, calib.numpy(), reduce_range=reduce_range, unsigned_weights=unsigned_weights)
            with OrtRunner(fp32, device="cpu") as ref_runner, OrtRunner(tmp, device="cpu") as q_runner:
                ref, got = ref_runner(images), q_runner(images)
                # what INT8 with an fp32 re-run of its near ties (engine/cascade.py) would give on these images
                cascade = CascadeRunner(q_runner, ref_runner, margin_for_share(q_runner, calib.numpy(), 0.1))
                both = cascade(images)
            result = compare(ref, got, atol=float("inf"), rtol=0.0, min_top1=min_agreement)
            typer.echo(f"INT8 ({weight_kind(reduce_range, unsigned_weights)}) vs FP32 {result.describe()} "
                       f"(need top-1 ≥ {100 * min_agreement:.0f}%)")
            agree = compare(ref, both, atol=float("inf"), rtol=0.0).top1
            typer.echo(f"with FP32 re-running INT8's near ties (top-2 margin < {cascade.margin:.3g}, the calibration "
                       f"images' lowest 10%): top-1 agreement {100 * agree:.2f}%, {100 * cascade.rerun_share:.1f}% "
                       f"re-run (pudrt.engine.CascadeRunner, with an FP32 export beside this file)")
            if not result.passed and not unsigned_weights and weights_reduced(reduce_range):
                typer.echo("hint: --unsigned-weights keeps all 8 bits without saturating on a CPU without VNNI "
                           "(closer to FP32, slower there); or accept less with --min-agreement")
        else:
            export_onnx(net, tmp, images[:4], dense=not keep_convs)
            result = verify_onnx(tmp, net, images, atol=atol, rtol=rtol)
            typer.echo(result.describe())
        if not result.passed:
            raise PudrtError(f"the export does not reproduce {model} within tolerance; nothing was written")
        tmp.replace(output)
    typer.echo(f"wrote {output}")


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
