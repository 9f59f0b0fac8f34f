"""bench/train_wall.py, bench/inference_grid.py and bench/budget_curve.py on tiny runs: what they count, by hand."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from dht.training.config import RunConfig, TrainConfig
from dht.training.loop import train

BENCH = Path(__file__).resolve().parents[2] / "bench"


def script(name):
    sys.path.insert(0, str(BENCH))  # inference_grid imports front_sweep, as when run from bench/
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    small = TrainConfig(epochs=1, batch_size=8, max_train=64, max_test=24, seed=3)
    warm = {"config": "f-dht", "full_depth_warmup": 0.5, "self_distill": 1.0}
    for method, options, name in (("full", {}, "full"), ("dht", {"config": "f-dht"}, "dht"), ("dht", warm, "warm")):
        train(RunConfig(method=method, backbone="tiny", train=small, options=options), root / name, progress=False)
    return root


def test_train_wall_counts_each_sides_trained_samples_and_flops(runs, tmp_path, monkeypatch):
    output = tmp_path / "wall.json"
    monkeypatch.setattr("sys.argv", ["train_wall.py", str(runs / "full"), str(runs / "full"), "--batches", "4",
                                     "--warmup", "2", "--output", str(output)])
    script("train_wall").main()
    result = json.loads(output.read_text())["result"]
    same = result["reference_side"], result["run_side"]
    assert all(side["samples"] == 4 * 8 for side in same)  # 6 batches of 8, the first 2 steps untimed
    assert all(side["flop_ratio_all_in"] == pytest.approx(1.0) for side in same)
    assert result["flop_ratio_all_in_per_sample"] == pytest.approx(1.0)
    monkeypatch.setattr("sys.argv", ["train_wall.py", str(runs / "full"), str(runs / "dht"), "--batches", "6",
                                     "--warmup", "1", "--output", str(output)])
    script("train_wall").main()
    result = json.loads(output.read_text())["result"]
    dht = result["run_side"]
    assert 0 < dht["samples"] <= 7 * 8 and dht["flop_ratio"] < dht["flop_ratio_all_in"]  # probes, bandits
    assert result["gap"] == pytest.approx(result["wall_ratio_per_sample"] - result["flop_ratio_all_in_per_sample"])


def test_train_wall_weighs_a_warmed_up_runs_two_kinds_of_steps_by_their_shares(runs, tmp_path, monkeypatch):
    """--full-depth-warmup 0.5: half the samples take BL1's step (plus the exit's classifier), half a
    routed step through the frozen encoder; the run's ratios are the shares' weighted sum."""
    output = tmp_path / "wall.json"
    monkeypatch.setattr("sys.argv", ["train_wall.py", str(runs / "full"), str(runs / "warm"), "--batches", "3",
                                     "--warmup", "1", "--output", str(output)])
    script("train_wall").main()
    result = json.loads(output.read_text())["result"]
    phases = result["phases"]
    warm, routed = phases["warmup"], phases["routed"]
    assert phases["full_depth_warmup"] == 0.5 and phases["warmup_side"]["samples"] == 3 * 8  # 32 warm up
    assert 1.0 < warm["flop_ratio_all_in_per_sample"] < 1.01  # BL1's step and one linear exit
    assert routed["flop_ratio_all_in_per_sample"] < 0.6  # forward only, probes and bandits included
    assert result["flop_ratio_all_in_per_sample"] == pytest.approx(
        0.5 * warm["flop_ratio_all_in_per_sample"] + 0.5 * routed["flop_ratio_all_in_per_sample"])
    assert result["wall_ratio_per_sample"] == pytest.approx(
        0.5 * warm["wall_ratio_per_sample"] + 0.5 * routed["wall_ratio_per_sample"])


def test_inference_grid_rows_are_the_runs_evaluations(runs, tmp_path, monkeypatch):
    output = tmp_path / "grid.json"
    monkeypatch.setattr("sys.argv", ["inference_grid.py", str(runs / "dht"), "--name", "tiny", "--cost-weights", "0",
                                     "--continue-above", "1", "0", "0.99999", "--output", str(output)])
    script("inference_grid").main()
    rows = json.loads(output.read_text())["result"]
    evaluated = json.loads((runs / "dht" / "metrics.json").read_text())["test"]
    never, always, hardly = rows  # the run's own settings are read from its metrics.json
    assert never["f1_macro"] == evaluated["f1_macro"] and never["continued_share"] == 0
    assert hardly["continued_share"] == 0  # evaluated here: no sample is that unsure, so the same figures
    assert hardly["f1_macro"] == pytest.approx(evaluated["f1_macro"])
    assert hardly["test_flop_ratio_all_in"] == pytest.approx(evaluated["flop_ratio_all_in"])
    deepest = sum(r["share"] for name, r in evaluated["routes"].items() if name.startswith("4L"))
    assert always["continued_share"] == pytest.approx(1 - deepest, abs=1e-3)  # all but the 4-layer arms go on


def test_budget_curve_searches_every_target_from_the_runs_own_knob(runs, tmp_path, monkeypatch):
    """A target below the cheapest arm ends λ's search at 1000, where DHT's knob becomes the continuation
    threshold; the next target must still be searched along λ, as `dht evaluate --budget` would."""
    output = tmp_path / "curve.json"
    monkeypatch.setattr("sys.argv", ["budget_curve.py", str(runs / "dht"), "--budgets", "0.01", "0.9",
                                     "--output", str(output)])
    script("budget_curve").main()
    low, high = json.loads(output.read_text())["result"]["budgets"]
    assert (low["option"], low["value"]) == ("cost_weight", 1000.0)  # out of reach: the cheapest end
    assert high["option"] == "cost_weight" and high["value"] < 1000.0


def test_inference_wall_times_each_run_again_with_the_options_of_also(runs, tmp_path, monkeypatch):
    """--also: the DHT run is timed as saved and with per-batch head sets, each row its own evaluation."""
    output = tmp_path / "inference_wall.json"
    monkeypatch.setattr("sys.argv", ["inference_wall.py", str(runs / "full"), str(runs / "dht"), "--rounds", "1",
                                     "--also", "head_sets=per-batch", "continue_above=0.5", "--output", str(output)])
    script("inference_wall").main()
    rows = json.loads(output.read_text())["result"]["rows"]
    assert [(Path(r["run"]).name, r["inference_options"]) for r in rows] == [
        ("full", {}), ("dht", {}), ("dht", {"head_sets": "per-batch", "continue_above": 0.5})]
    assert rows[0]["wall_ratio"] == 1.0
    for row in rows[1:]:
        assert row["wall_ratio"] == pytest.approx(row["seconds"] / rows[0]["seconds"])


def test_also_reads_each_value_as_its_options_declared_type():
    parse = script("inference_wall").parse_options
    # head_sets is a string option: "1" stays a string; continue_above is a float, true/false a bool.
    assert parse(["head_sets=1", "continue_above=1", "continue_above=0.5"], "dht") == {
        "head_sets": "1", "continue_above": 0.5}
    assert parse(["speed=1"], "fastbert") == {"speed": 1.0} and type(parse(["speed=1"], "fastbert")["speed"]) is float
    with pytest.raises(ValueError, match="--continue-above: could not convert"):
        parse(["continue_above=high"], "dht")
    with pytest.raises(ValueError, match="--also: method full takes no option head_sets"):
        parse(["head_sets=per-batch"], "full")


def test_inference_wall_refuses_an_also_pair_without_a_value(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["inference_wall.py", str(runs / "full"), str(runs / "dht"), "--also", "head_sets",
                                     "--output", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit) as stopped:
        script("inference_wall").main()
    assert stopped.value.code == 2 and "KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
