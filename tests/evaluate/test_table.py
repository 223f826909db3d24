import math
import re

import pytest

from pudrt.evaluate import trade_off_table


def _rows():
    infected = {"model": "infected.pt", "engine": "torch-cpu", "c_acc": 0.8476, "asr": 0.9616,
                "adv_acc@PGD-7/6": 0.006, "adv_acc@PGD-10/8": 0.0}
    purified = {"model": "purified.pt", "engine": "torch-cpu", "c_acc": 0.853, "asr": 0.013,
                "adv_acc@PGD-7/6": 0.041, "adv_acc@PGD-10/8": 0.004}
    int8 = {"model": "purified-int8.onnx", "engine": "CPUExecutionProvider", "c_acc": 0.853, "asr": 0.0135,
            "adv_acc@PGD-7/6": 0.042, "adv_acc@PGD-10/8": 0.004, "source": "purified.pt",
            "vs_source": {"top1_agreement": 0.9912, "max_abs_logit": 4.51}}
    return [infected, purified, int8]


def _cells(line):
    """A Markdown row's cells, split at the pipes that are not escaped."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_table_gives_each_row_its_numbers_and_the_change_against_the_first():
    lines = trade_off_table(_rows()).splitlines()
    assert lines[0] == ("| model | run by | C-Acc | ASR | adv_acc@PGD-7/6 | adv_acc@PGD-10/8 | "
                        "top-1 agreement with its source |")
    assert len(lines) == 5 and all(len(_cells(line)) == 7 for line in lines)
    cells = _cells(lines[3])
    assert cells[:6] == ["purified.pt", "torch-cpu", "85.30% (+0.54)", "1.30% (−94.86)", "4.10% (+3.50)",
                         "0.40% (+0.40)"]
    assert cells[6] == "-"  # a model has no source to agree with
    first = _cells(lines[2])
    assert first[2:6] == ["84.76%", "96.16%", "0.60%", "0.00%"]  # the baseline row has no change
    last = _cells(lines[4])
    assert last[2] == "85.30% (+0.54)" and last[6] == "99.12% (max \\|Δlogit\\| 4.5)"


def test_table_marks_what_a_row_lacks_and_what_did_not_change():
    rows = _rows()
    del rows[2]["adv_acc@PGD-7/6"]  # an engine measured without --source has no PGD numbers
    rows[1]["c_acc"] = rows[0]["c_acc"]
    rows[1]["asr"] = math.nan
    lines = trade_off_table(rows).splitlines()
    assert _cells(lines[3])[2:4] == ["84.76% (±0.00)", "-"]
    assert _cells(lines[4])[4] == "-"
    rows = [{"model": "a|b.pt", "engine": "torch-cpu", "c_acc": 0.5}]
    assert trade_off_table(rows).splitlines()[2] == "| a\\|b.pt | torch-cpu | 50.00% |"
    with pytest.raises(ValueError, match="at least one"):
        trade_off_table([])
