"""The purification benchmark: its summary tables judged against the targets, and `--resume` across starts."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "purify_cifar10.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("purify_cifar10", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(bench, attack, method, asr_after, c_after, adv_after, **extra):
    return {
        "date": "2026-11-30", "attack": attack, "method": method, "arch": "resnet9w16", "epochs_scale": 0.1,
        "before": {"c_acc": 0.85, "asr": 0.96, bench.ADV: 0.006},
        "after": {"c_acc": c_after, "asr": asr_after, bench.ADV: adv_after},
        "purify_minutes": 10.0, "commit": "abc1234", **extra,
    }


def test_summary_keeps_the_latest_full_set_row_and_judges_each_target():
    bench = load_bench()
    rows = [
        row(bench, "blend", "pud", 0.30, 0.84, 0.05),                    # superseded by the next blend row
        row(bench, "blend", "pud", 0.009, 0.81, 0.05),                   # C-Acc drop 4 points: missed
        row(bench, "badnets", "advrbd", 0.015, 0.858, 0.001),            # adv_acc fell: missed
        row(bench, "badnets", "pud", 0.5, 0.85, 0.05, per_class=1500),   # a subset: not in the summary
        row(bench, "badnets", "pud", 0.01, 0.80, 0.05, options={"lr": 0.01}),  # a variant: not in the summary
        row(bench, "badnets", "pud", 0.01, 0.80, 0.05, test_samples=2000),  # a test subset: not in the summary
        row(bench, "badnets", "pud", 0.004, 0.866, 0.006, epochs_scale=1.0),  # the full schedule: a row of its own
        row(bench, "badnets", "pud", 0.013, 0.853, 0.041),
    ]
    older = row(bench, "badnets", "pbe", 0.9, 0.6, 0.2, epochs_scale=0.3)  # from an earlier infected model: history
    older["before"] = {"c_acc": 0.848, "asr": 0.957, bench.ADV: 0.012}
    rows.insert(0, older)
    table = [line for line in bench.summary_lines(rows) if line.startswith("| resnet9w16")]
    assert len(table) == 4
    pud_short, pud_full, badnets, blend = table  # attacks, then methods, in the benchmark's order, then schedules
    assert "| badnets | pud | 0.1 |" in pud_short and "yes / yes / yes" in pud_short
    assert "| badnets | pud | 1.0 |" in pud_full and "yes / yes / **no**" in pud_full
    assert "| badnets | advrbd |" in badnets and badnets.count("**no**") == 1 and "yes / yes / **no**" in badnets
    assert "| blend | pud |" in blend and "yes / **no** / yes" in blend
    assert "96.0→0.9" in blend and "96.0→30.0" not in blend  # the later blend row, not the superseded one


def test_a_row_names_its_options_and_label():
    bench = load_bench()
    assert bench.options_note({"options": {"shared_pattern": False}, "label": "no-pattern"}) == (
        " (shared_pattern=false, “no-pattern”)")
    assert bench.options_note({"options": {}, "label": ""}) == ""


def test_seeds_of_one_setting_are_gathered_with_their_spread():
    bench = load_bench()
    rows = [
        row(bench, "wanet", "pud", 0.019, 0.826, 0.196),
        row(bench, "wanet", "pud", 0.025, 0.830, 0.180, options={"seed": 1}),   # ASR over 2%: targets missed
        row(bench, "wanet", "pud", 0.015, 0.822, 0.200, options={"seed": 2}),
        row(bench, "blend", "pud", 0.015, 0.834, 0.178),
        row(bench, "blend", "pud", 0.010, 0.834, 0.178, options={"seed": 1, "lr": 0.02}),  # a variant: left out
        row(bench, "sig", "pud", 0.001, 0.813, 0.147, options={"seed": 1}),
    ]
    older = row(bench, "sig", "pud", 0.001, 0.813, 0.147)  # the default seed, but on an earlier infected model
    older["before"] = {"c_acc": 0.782, "asr": 0.988, bench.ADV: 0.004}
    rows.insert(0, older)
    table = [line for line in bench.seed_lines(rows) if line.startswith("| resnet9w16")]
    assert len(table) == 1, table  # blend and sig have one seed each on their current model
    wanet = table[0]
    assert "| wanet | pud | 0.1 | 0 (abc1234), 1 (abc1234), 2 (abc1234) |" in wanet
    assert "1.97 (1.50–2.50)" in wanet and "82.6 (82.2–83.0)" in wanet and "| 2 of 3 |" in wanet
    assert bench.seed_lines(rows[:1]) == []


def test_remeasure_adds_untriggered_asr_only_where_the_cached_model_is_the_rows(tmp_path, monkeypatch, test_data):
    import json

    import torch

    from pudrt.attacks import BadNets
    from pudrt.evaluate import backdoor_rates, clean_accuracy
    from pudrt.io.models import load_model, save_model
    from pudrt.models import create_model

    bench = load_bench()
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "rows.jsonl")
    run = {"attack": "badnets", "arch": "resnet8", "train_epochs": 15, "method": "pud", "epochs_scale": 0.1}
    torch.manual_seed(0)
    save_model(create_model("resnet8", 10).eval(), bench.infected_path(tmp_path, run), "resnet8", 10)
    step = bench.purified_dir(tmp_path, run) / "checkpoints" / "step-5.pt"
    step.parent.mkdir(parents=True)
    torch.save({"step": 5, "student": create_model("resnet8", 10).state_dict()}, step)
    measured = {}
    for side, checkpoint in (("before", None), ("after", step)):
        net = load_model(bench.infected_path(tmp_path, run)).net
        if checkpoint is not None:
            net.load_state_dict(torch.load(checkpoint, weights_only=True)["student"])
        measured[side] = {"c_acc": clean_accuracy(net.eval(), test_data),
                          **backdoor_rates(net, test_data, BadNets())}
    recorded = lambda side: {k: measured[side][k] for k in ("c_acc", "asr")}  # noqa: E731
    rows = [
        {**run, "date": "2026-11-30", "before": recorded("before"),  # an older run: the folder holds a later model
         "after": {**recorded("after"), "asr": measured["after"]["asr"] + 0.01}},
        {**run, "date": "2026-12-01", "before": recorded("before"), "after": recorded("after")},
        {**run, "date": "2026-12-01", "before": None, "after": None},  # an unfinished row
    ]
    bench.RESULTS.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench.remeasure(test_data, tmp_path)
    older, latest, unfinished = (json.loads(line) for line in bench.RESULTS.read_text().splitlines())
    assert older == rows[0] and unfinished == rows[2]
    for side in ("before", "after"):
        for key in bench.REMEASURED:
            assert latest[side][key] == measured[side][key]
    assert latest["remeasured"]["keys"] == list(bench.REMEASURED)


def test_an_asr_miss_under_its_untriggered_count_says_so():
    bench = load_bench()
    plain = row(bench, "wanet", "pud", 0.0202, 0.826, 0.192)
    assert bench.targets_met(plain) == "**no** / yes / yes" and bench.asr_cell(plain["before"], plain["after"]) == (
        "96.0→2.02")
    floor = row(bench, "wanet", "pud", 0.0202, 0.826, 0.192)
    floor["after"]["asr_untriggered"] = 0.0207
    assert bench.targets_met(floor) == "**no** (untriggered higher) / yes / yes"
    assert bench.asr_cell(floor["before"], floor["after"]) == "96.0→2.02 (2.07 untriggered)"
    # beside it, where the row has a clean-trained reference, what the trigger reads on a model that never saw one
    assert bench.asr_cell(floor["before"], floor["after"], {"asr": 0.0149}) == (
        "96.0→2.02 (2.07 untriggered; clean model 1.49)")
    floor["after"]["asr_untriggered"] = 0.015  # the trigger still adds to the model's errors: a plain miss
    assert bench.targets_met(floor) == "**no** / yes / yes"
    # counted as a miss in the seed table all the same
    assert "| 0 of 2 |" in bench.seed_lines([plain, {**floor, "options": {"seed": 1}}])[-2]


def test_a_row_without_a_clean_reference_shows_the_latest_one_of_its_clean_model():
    bench = load_bench()
    ref = {"model": "clean-full-resnet9w16-15ep.pt", "c_acc": 0.86, "target_acc": 0.896, "asr": 0.0144}
    rows = [
        row(bench, "badnets", "pud", 0.01, 0.84, 0.05, reference={**ref, "asr": 0.02}),
        row(bench, "badnets", "pud", 0.01, 0.84, 0.05, reference=ref),    # the latest for BadNets on the full set
        row(bench, "blend", "pud", 0.01, 0.84, 0.05, reference={**ref, "asr": 0.0073}),
        row(bench, "badnets", "pbe", 0.9, 0.83, 0.07),                    # run without --reference
        row(bench, "badnets", "pud", 0.01, 0.84, 0.05, per_class=500),   # another clean model: none recorded
    ]
    carried = bench.carry_references(rows)
    assert carried[3]["reference"] == ref and "reference" not in rows[3]  # the rows read are left as they were
    assert carried[4].get("reference") is None and carried[:3] == rows[:3]
    line = next(line for line in bench.summary_lines(carried) if "| badnets | pbe |" in line)
    assert "(clean 86.0)" in line and "clean model 1.44" in line


def test_the_latest_complete_invocation_is_one_table_and_a_later_one_says_how_far_it_got():
    bench = load_bench()

    def of(invocation, attack, method, starts=1, **extra):
        inv = {"id": invocation, "code": "c0de", "attacks": ["badnets", "blend"], "methods": ["pud", "advrbd"],
               "starts": starts}
        return row(bench, attack, method, 0.01, 0.84, 0.05, invocation=inv, command="purify_cifar10.py --resume",
                   machine={"cpu": "AMD EPYC"}, **extra)

    rows = [
        of("old", "badnets", "pud"),  # an invocation that never finished
        of("one", "blend", "advrbd"), of("one", "badnets", "pud", starts=2), of("one", "blend", "pud"),
        row(bench, "badnets", "pud", 0.5, 0.84, 0.05),  # a row of no invocation
        of("one", "badnets", "advrbd", date="2026-12-02"),
        of("new", "badnets", "pud"),  # under way
    ]
    lines = bench.invocation_lines(rows)
    table = [line for line in lines if line.startswith("| badnets") or line.startswith("| blend")]
    assert [line.split(" | ")[:2] for line in table] == [["| badnets", "pud"], ["| badnets", "advrbd"],
                                                         ["| blend", "pud"], ["| blend", "advrbd"]]
    assert table[0].endswith("| 2 |") and all(line.endswith("| 1 |") for line in table[1:])
    text = "\n".join(lines)
    assert "invocation one" in text and "5 start(s)" in text and "2026-11-30 to 2026-12-02" in text
    assert "Under way: invocation new" in text and "1 of 4 rows" in text and "invocation old" not in text
    assert "`purify_cifar10.py --resume` at the same code" in text
    assert bench.invocation_lines(rows[4:5]) == []


def test_resume_carries_on_a_stopped_purification_of_the_same_invocation_only(badnets_model, badnets_data,
                                                                              tmp_path):
    import json

    import pytest

    from pudrt.purify import PurifyConfig, purify

    bench = load_bench()
    data = badnets_data.per_class(60)
    cfg = PurifyConfig.for_method("pud", epochs_scale=0.1, discovery_samples=200, residual_check=False)
    out = tmp_path / "run"

    def start(stop_after=None):
        return lambda restart: purify(badnets_model, data, cfg, out, 10, stop_after=stop_after, restart=restart)

    first, _, starts = bench.purify_part(start(stop_after=1), out, "inv-a", resume=True)
    assert starts == 1 and not first.finished and [r["step"] for r in first.history] == [1]
    later, minutes, starts = bench.purify_part(start(stop_after=3), out, "inv-a", resume=True)
    assert starts == 2 and [r["step"] for r in later.history] == [1, 2, 3]
    assert later.history[:1] == first.history  # the first start's step is kept, not done again
    # the clock goes on from the checkpoint: the minutes count both starts' work
    assert later.history[1]["seconds"] >= first.history[0]["seconds"]
    assert minutes * 60 >= later.history[-1]["seconds"]
    # another invocation (other code or settings) starts over in the same folder
    again, _, starts = bench.purify_part(start(stop_after=1), out, "inv-b", resume=True)
    assert starts == 1 and [r["step"] for r in again.history] == [1]
    assert json.loads((out / bench.STAMP).read_text()) == {"id": "inv-b", "starts": 1}
    # a start killed before its first step (here: at once) leaves no earlier run's checkpoint under its stamp
    def killed(restart):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bench.purify_part(killed, out, "inv-c", resume=True)
    assert json.loads((out / bench.STAMP).read_text()) == {"id": "inv-c", "starts": 1}
    assert not list((out / "checkpoints").glob("step-*.pt"))


def test_epochs_scale_is_one_for_all_methods_or_one_per_method():
    import pytest

    bench = load_bench()
    assert bench.parse_scales("0.1", ["pud", "pbe"]) == {"pud": 0.1, "pbe": 0.1}
    assert bench.parse_scales("pud=0.3,advrbd=1", ["pud", "pbe", "advrbd"]) == {"pud": 0.3, "pbe": 0.1, "advrbd": 1.0}
    with pytest.raises(SystemExit, match="which --methods does not run"):
        bench.parse_scales("pbe=1", ["pud"])
    with pytest.raises(SystemExit, match="takes a number or METHOD=NUMBER"):
        bench.parse_scales("pud=fast", ["pud"])
