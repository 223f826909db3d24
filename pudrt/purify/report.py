"""Write the purified model, its ONNX export and report.md; say in a few lines what happened."""

from __future__ import annotations

import json
from pathlib import Path

from pudrt.errors import PudrtError
from pudrt.io.atomic import atomic_path
from pudrt.io.models import LoadedModel, save_model
from pudrt.purify.config import PurifyConfig
from pudrt.purify.run import PurifyResult


def _fmt(row: dict | None) -> str:
    if not row:
        return "-"
    return "  ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float))


def _filter_line(fit: dict) -> str:
    if fit["fit"] == "none":
        return f"target class filter: flagged nothing in class {fit['class']} at the last step ({fit['dropped']})"
    if fit["fit"] == "anchored":
        source = ("rows of the clean pool the judge reads as the class" if fit.get("anchors_from") == "judge"
                  else "rows in the first clean pool")
        kept = fit.get("anchors_kept", fit["anchors"])  # histories written before the trimmed fit lack it
        trim = f"; {fit['anchors'] - kept} of them dropped as beyond it" if kept != fit["anchors"] else ""
        how = f"a fit on its {fit['anchors']} {source} (beyond χ²_{fit['k']} {fit['cut']}{trim})"
    else:
        how = f"SPECTRE (k {fit['k']}, {fit['expected_poisons']} expected poisons)"
    truth = f", {fit['flagged_quality']['precision']:.1%} poisons by ground truth" if "flagged_quality" in fit else ""
    return (f"target class filter: {how} flagged {fit['flagged']} samples of class {fit['class']} at the last "
            f"step{truth}")


def _pattern_line(found: dict) -> str:
    if "scale" not in found or "skipped" in found:
        return f"shared pattern of class {found.get('class')} not used: {found.get('skipped', 'not a trigger')}"
    flips = found["flips_to_target"][str(found["scale"])]
    line = (f"shared pattern of class {found['class']} (RMS {found['rms_255']}/255) turned {flips:.0%} of other "
            f"images into the class at {found['scale']:g}x: unlearned on copies of other classes' images")
    if found.get("restored_rows"):
        line += (f"; {found['carrying_share']:.0%} of the class carries it, so its {found['restored_rows']} samples "
                 f"were trained on with the pattern taken out")
    return line


def sides_line(sides: dict) -> str:
    """AdvrBD's stage-1 orientation (advrbd.kl_partition's `sides`), in words."""
    line = f"AdvrBD: poisons read as {sides['poisons']} under a patch perturbation"
    if sides["kl_orientation"] != "auto":
        return f"{line} (--kl-orientation {sides['kl_orientation']})"
    if "target_share" not in sides:
        return f"{line} (the paper's side: no target class was found to read it from)"
    return (f"{line}: class {sides['target']} is {sides['target_share_lowest_kl']:.0%} of the lowest-KL rows, "
            f"{sides['target_share_highest_kl']:.0%} of the highest and {sides['target_share']:.0%} of DATA")


def finish(result: PurifyResult, loaded: LoadedModel, source: Path, out: Path, cfg: PurifyConfig,
           onnx: bool = True) -> list[str]:
    """Save the outputs of a finished (or stopped) run; returns the lines the CLI prints."""
    out = Path(out)
    lines = [f"target class: {result.target.statement}"]
    gate = next((r["target_gate"] for r in result.history if r.get("target_gate")), None)
    if gate and "skipped" in gate and "rows" not in gate:
        lines.append(f"target gate not used: {gate['skipped']}")
    elif gate and "skipped" in gate:
        lines.append(f"target gate skipped: {gate['skipped']} ({gate['rows']} samples of class {gate['class']}, "
                     f"about {gate['expected_clean_inside']} expected clean); PUD ran without it")
    elif gate:
        truth = f", {gate['poison_pool']['precision']:.1%} by ground truth" if "poison_pool" in gate else ""
        lines.append(f"target gate: {gate['rows']} samples of class {gate['class']} barely move under a patch "
                     f"perturbation (estimated {gate['estimated_precision']:.0%} poisons{truth}); kept out of every "
                     f"clean pool and unlearned")
    pattern = next((r["shared_pattern"] for r in result.history if r.get("shared_pattern")), None)
    if pattern:
        lines.append(_pattern_line(pattern))
    sides = next((r["sides"] for r in result.history if r.get("sides")), None)
    if sides:
        lines.append(sides_line(sides))
    fit = next((r["spectre"] for r in reversed(result.history) if r.get("spectre")), None)
    if fit:
        lines.append(_filter_line(fit))
    flip = next((r for r in result.history if r.get("spectre", {}).get("inverted")), None)
    if flip:
        was = flip["spectre"]["inverted"]
        lines.append(f"target class filter inverted at step {flip['step']}: the judge read "
                     f"{was['orientation']['judge_agrees_flagged']:.0%} of its {was['flagged']} flags as class "
                     f"{fit['class']} and {was['orientation']['judge_agrees_rest']:.0%} of the rest; "
                     + ("it was refitted on rows the judge confirms" if flip["spectre"]["fit"] == "anchored"
                        else f"nothing was flagged ({flip['spectre'].get('dropped')})"))
    if not result.finished:
        lines.append(f"stopped after step {result.history[-1].get('step')}; run the same command again to resume "
                     f"from {out / 'checkpoints'}")
        return lines
    suffix = source.suffix if source.suffix in (".pt", ".pth", ".safetensors") else ".pt"
    model_path = out / f"model{suffix}"
    save_model(result.model, model_path, loaded.info.arch, loaded.info.num_classes)
    lines.append(f"purified model: {model_path}")
    if onnx:
        from pudrt.engine.export import export_onnx, verify_onnx

        onnx_path = export_onnx(result.model, out / "model.onnx", result.check_images[:8])
        agreement = verify_onnx(onnx_path, result.model, result.check_images)
        if not agreement.passed:
            onnx_path.unlink(missing_ok=True)
            raise PudrtError(f"the ONNX export of the purified model disagrees with it: {agreement.describe()}")
        lines.append(f"ONNX export: {onnx_path} ({agreement.describe()})")
    lines.append(f"clean pool: {len(result.clean_indices)} samples, poison pool: {len(result.poison_indices)} "
                 f"(clean_indices.npy, poison_indices.npy, scores.csv)")
    if result.residual is not None:
        lines.append(("WARNING: " if result.residual["persists"] else "") + "residual check (target discovery on the "
                     f"purified model, residual.json): {result.residual['statement']}")
    elif cfg.residual_check and result.target.target_class is None:
        lines.append("residual check: not run, no target class was found to look for again")
    last = result.history[-1] if result.history else {}
    if result.before is not None:
        lines.append(f"before: {_fmt(result.before)}")
        lines.append(f"after:  {_fmt(last.get('eval'))}")
    quality = last.get("pools") or next((r["pools"] for r in reversed(result.history) if r.get("pools")), None)
    if quality:
        lines.append("pools vs ground truth: " + json.dumps(quality))
    lines.append(f"history: {out / 'history.json'}, report: {out / 'report.md'} ({result.seconds:.0f} s)")
    write_report(out / "report.md", result, cfg, lines)
    return lines


def write_report(path: Path, result: PurifyResult, cfg: PurifyConfig, summary: list[str]) -> None:
    rows = ["# pudrt purify report", "", f"Method: **{cfg.method.upper()}**, epochs scale {cfg.epochs_scale}.", ""]
    rows += [f"- {line}" for line in summary]
    rows += ["", "## Steps", "", "| step | clean pool | poison pool | metrics | pool quality |",
             "|---|---|---|---|---|"]
    for r in result.history:
        name = " ".join(str(r[k]) for k in ("step", "stage") if k in r)
        rows.append(f"| {name} | {r.get('clean_pool', '')} | {r.get('poison_pool', '')} | {_fmt(r.get('eval'))} | "
                    f"{json.dumps(r.get('pools', ''))} |")
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(rows) + "\n")
