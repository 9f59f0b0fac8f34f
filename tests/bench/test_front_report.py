"""bench/front_report.py's sweep table: FastBERT's mean curve and each seed's own, checked by hand."""

import json

from test_train_wall import script


def row(seed, method, f1, flops, knob="speed", value=None):
    return {"seed": seed, "method": method, "config": method, "knob": knob, "value": value, "f1_macro": f1,
            "test_flop_ratio_all_in": flops, "train_flop_ratio_all_in": 0.5}


def test_a_mean_above_the_curve_is_counted_against_each_seeds_own_curve(tmp_path):
    rows = [row(0, "fastbert", 0.80, 0.2, value=1.0), row(0, "fastbert", 0.90, 0.4, value=0.5),
            row(1, "fastbert", 0.70, 0.2, value=1.0), row(1, "fastbert", 0.80, 0.4, value=0.5),
            row(2, "fastbert", 0.86, 0.25, value=1.0), row(2, "fastbert", 0.88, 0.4, value=0.5),
            # DHT at 0.3: seed 0 below its curve (0.85), seed 1 above its own (0.75), seed 2 outside its own.
            row(0, "dht", 0.84, 0.3, knob="τ 0.5"), row(1, "dht", 0.83, 0.3, knob="τ 0.5"),
            row(2, "dht", 0.79, 0.22, knob="τ 0.5")]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"provenance": {}, "result": rows}))
    line = next(x for x in script("front_report").sweep_table([path]).splitlines() if x.startswith("| dht"))
    # Means: DHT 0.82 at 0.2733; FastBERT's mean curve runs from (0.2167, 0.7867) to (0.4, 0.86).
    there = 0.7867 + (0.86 - 0.7867) * (0.2733 - 0.2167) / (0.4 - 0.2167)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3].startswith("0.8200") and cells[4] == "0.273" and cells[6] == f"{there:.4f}"
    assert cells[7] == "yes" and cells[8] == "1 of 2 (1 outside its seed's curve)"


def evaluation(run, head_sets, f1, routes):
    return {"run": run, "dataset": "ag_news", "options": {"head_sets": head_sets},
            "test": {"f1_macro": f1, "flop_ratio_all_in": 0.5, "routes": {k: {"share": v} for k, v in routes.items()}}}


def test_head_sets_table_pairs_each_runs_two_evaluations_and_counts_samples_on_fewer_heads(tmp_path):
    documents = [evaluation("f", "per-batch", 0.8800, {"2L12H": 0.5, "4L8H": 0.3, "4L10H": 0.2}),
                 evaluation("f", "per-sample", 0.8790, {"2L12H": 0.5, "4L8H": 0.3, "4L10H": 0.2}),
                 evaluation("t", "per-sample", 0.8700, {"2L": 0.6, "4L": 0.4}),
                 evaluation("t", "per-batch", 0.8650, {"2L": 0.6, "4L": 0.4})]
    paths = []
    for i, document in enumerate(documents):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(document))
    lines = script("front_report").head_sets_table(paths).splitlines()[2:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0] == ["f", "0.8790", "0.8800", "+0.0010", "0.500 (0.500)", "0.50"]  # 4L8H and 4L10H
    assert cells[1] == ["t", "0.8700", "0.8650", "-0.0050", "0.500 (0.500)", "n/a"]  # its routes name no heads
    assert script("front_report").route_heads("2L12H>4L8H") == 8


def test_the_benchs_oracle_rows_stay_off_fastberts_curve_and_apart_from_each_other(tmp_path):
    rows = [row(0, "fastbert", 0.80, 0.2, value=1.0), row(0, "fastbert", 0.90, 0.4, value=0.5),
            row(0, "dht", 0.84, 0.3, knob="continue_above", value=0.5)]
    for method, f1, kind in (("fastbert", 0.99, "oracle_correct"), ("dht", 0.97, "oracle_correct"),
                             ("dht", 0.85, "oracle_agrees_with_full")):
        rows.append({**row(0, method, f1, 0.25, knob=None), "kind": kind})
    rows = [{"kind": "knob", **r} for r in rows]
    path = tmp_path / "curves.json"
    path.write_text(json.dumps({"provenance": {}, "result": rows}))
    lines = {tuple(c.strip() for c in x.strip("|").split("|"))[:2]: [c.strip() for c in x.strip("|").split("|")]
             for x in script("front_report").sweep_table([path]).splitlines()[2:]}
    # FastBERT's curve from its two speeds only: 0.85 at 0.3, not pulled up by its oracle's 0.99 at 0.25.
    assert lines[("dht", "continue_above 0.5")][6] == "0.8500" and lines[("dht", "continue_above 0.5")][7] == "no"
    assert lines[("dht", "oracle_correct")][3].startswith("0.9700")
    assert lines[("dht", "oracle_agrees_with_full")][3].startswith("0.8500")
    assert lines[("dht", "oracle_correct")][6] == "0.8250"  # the curve at 0.25
