"""The trade-off table: several models or engines measured on the same test data, one row each.

Adversarial fine-tuning buys robustness to evasion and can cost clean accuracy; a backdoor
defence can cost both; an engine can lose agreement with the model it came from. Weng et
al. (NeurIPS 2020) showed that adversarial and backdoor robustness pull against each
other, so one model's numbers alone do not say what a change cost. The table puts the
rows side by side and, after the first row (the baseline: say, the infected model), gives
each metric's change against it in percentage points.
"""

from __future__ import annotations

import math

_FIXED = (("c_acc", "C-Acc"), ("asr", "ASR"), ("asr_untriggered", "ASR untriggered"), ("robust_acc", "RA"))


def metric_columns(rows: list[dict]) -> list[tuple[str, str]]:
    """(key, heading) of each metric that any row has, in the order: C-Acc, ASR (and its untriggered count and RA),
    then each adv_acc as first met."""
    keys = [(key, title) for key, title in _FIXED if any(key in row for row in rows)]
    seen = {key for key, _ in keys}
    for row in rows:
        for key in row:
            if key.startswith("adv_acc@") and key not in seen:
                keys.append((key, key))
                seen.add(key)
    return keys


def trade_off_table(rows: list[dict]) -> str:
    """A Markdown table of evaluation results (`pudrt evaluate`'s per-model dicts), one row each.

    Columns: what was evaluated, what ran it, C-Acc, ASR, each adv_acc, and for engines measured with a source
    model the top-1 agreement with it. Rows after the first carry each metric's change against the first row in
    points, e.g. `84.8% (−0.5)`; a metric a row lacks (an engine's PGD without `--source`) is a dash.
    """
    if not rows:
        raise ValueError("the trade-off table needs at least one evaluated row")
    columns = metric_columns(rows)
    agree = any("vs_source" in row for row in rows)
    head = ["model", "run by", *(title for _, title in columns)]
    head += ["top-1 agreement with its source"] if agree else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = rows[0]
    for i, row in enumerate(rows):
        cells = [str(row["model"]).replace("|", "\\|"), str(row.get("engine", "-"))]
        for key, _ in columns:
            cells.append(_cell(row.get(key), base.get(key) if i else None))
        if agree:
            vs = row.get("vs_source")
            cells.append(f"{100 * vs['top1_agreement']:.2f}% (max \\|Δlogit\\| {vs['max_abs_logit']:.2g})"
                         if vs else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float | None, base: float | None) -> str:
    """A metric as a percentage, with its change against the baseline row in points when there is one."""
    if value is None or math.isnan(value):
        return "-"
    text = f"{100 * value:.2f}%"
    if base is not None and not math.isnan(base):
        delta = round(100 * (value - base), 2)
        text += f" ({'+' if delta > 0 else '−' if delta < 0 else '±'}{abs(delta):.2f})"
    return text
