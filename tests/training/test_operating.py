"""Operating points of a trained run: the knob found for a budget, and the oracle routers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dht.cli import main
from dht.training.config import RunConfig, TrainConfig
from dht.training.evaluation import SplitPrediction
from dht.training.loop import evaluate, load_run, train
from dht.training.operating import bisect_knob, budget_search, cheapest_good_route, class_balanced_ratio, oracle_scores
from dht.training.setup import prepare

SMALL = TrainConfig(epochs=2, batch_size=16, max_train=160, max_test=64, seed=5)


def test_the_searched_ratio_weights_every_class_equally():
    flops = torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64)
    full = torch.tensor([2.0, 2.0, 4.0], dtype=torch.float64)
    prediction = SplitPrediction(torch.zeros(3, dtype=torch.long), torch.zeros(3, 2), flops, full, flops,
                                 ["", "", ""], (5.0, 8.0, 5.0), 0.0)
    # Class 0's two samples weigh 1/2 each, class 1's one sample 1: (0.5 + 0.5 + 3) / (1 + 1 + 4).
    assert class_balanced_ratio(prediction, [0, 0, 1]) == pytest.approx(4 / 6)
    assert class_balanced_ratio(prediction, [0, 1, 2]) == pytest.approx(5 / 8)  # one each: the plain ratio


def test_bisection_finds_the_step_nearest_the_target():
    steps = [(0.0, 1.0), (0.25, 0.8), (0.5, 0.6), (0.75, 0.4)]  # a falling step function on [0, 1]
    ratio_at = lambda x: next((r for edge, r in reversed(steps) if x >= edge), 1.0)
    value, ratio, tried = bisect_knob(ratio_at, 0.62, 0.0, 1.0, tolerance=0.005, steps=20)
    assert ratio == 0.6 and 0.5 <= value < 0.75
    assert bisect_knob(ratio_at, 0.41, 0.0, 1.0, tolerance=0.02, steps=20)[1] == 0.4  # stops within tolerance
    # A target beyond what the knob reaches returns the nearer end after the two end evaluations.
    value, ratio, tried = bisect_knob(ratio_at, 0.1, 0.0, 1.0, tolerance=0.005, steps=20)
    assert (value, ratio, len(tried)) == (1.0, 0.4, 2)
    value, ratio, tried = bisect_knob(ratio_at, 1.2, 0.0, 1.0, tolerance=0.005, steps=20)
    assert (value, ratio, len(tried)) == (0.0, 1.0, 2)


def test_the_cheapest_good_route_per_sample():
    flops = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]])  # routes x samples
    good = torch.tensor([[False, False, False], [True, False, False], [True, True, False]])
    # sample 0: routes 1 and 2 good -> 1; sample 1: only 2 -> 2; sample 2: none -> the cheapest, 0
    assert cheapest_good_route(flops, good).tolist() == [1, 2, 0]
    uneven = torch.tensor([[5.0, 1.0], [2.0, 3.0]])  # per-sample costs decide, not the route's order
    assert cheapest_good_route(uneven, torch.ones(2, 2, dtype=torch.bool)).tolist() == [1, 0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny F-DHT run and a tiny FastBERT run on its own BL1 teacher."""
    root = tmp_path_factory.mktemp("operating")
    train(RunConfig(method="dht", backbone="tiny", train=SMALL, options={"config": "f-dht"}), root / "dht",
          progress=False)
    train(RunConfig(backbone="tiny", train=SMALL), root / "bl1", progress=False)
    train(RunConfig(method="fastbert", backbone="tiny", train=SMALL, options={"teacher": str(root / "bl1")}),
          root / "fastbert", progress=False)
    return root


@pytest.mark.parametrize("name", ["dht", "fastbert"])
def test_a_budget_sets_the_knob_and_the_test_ratio_follows(runs, name):
    prepared = load_run(runs / name)
    ends = budget_search(prepared, 1.0, tolerance=0.0, steps=0)["reachable"]
    assert ends[0] < ends[1]  # the knob moves the cost
    target = (ends[0] + ends[1]) / 2
    found = budget_search(prepared, target)
    assert found["option"] == prepared.method.knob.option
    assert getattr(prepared.method.options, found["option"]) == found["value"]  # the method now runs with it
    # On a tiny training sample the ratio moves in steps; it lands on the step nearest the target.
    assert abs(found["train_flop_ratio_all_in"] - target) < 0.1
    test = evaluate(prepared)["flop_ratio_all_in"]
    assert ends[0] - 0.05 <= test <= ends[1] + 0.05


def test_with_the_cost_weight_at_its_cheapest_end_the_budget_sets_the_continuation_threshold(runs, capsys):
    prepared = load_run(runs / "dht", overrides={"cost_weight": 1000.0})
    assert type(prepared.method).knob_for({"cost_weight": 1000.0}).option == "continue_above"
    assert type(prepared.method).knob_for({"cost_weight": 999.0}).option == "cost_weight"
    low, high = budget_search(prepared, 1.0, tolerance=0.0, steps=0)["reachable"]
    assert low < high  # τ = 1: every sample stops on 2L4H; τ = 0: every sample runs on to 4 layers
    assert set(evaluate(prepared)["routes"]) <= {"2L4H>4L4H"}  # τ = 0 is what the search left there last...
    found = budget_search(prepared, (low + high) / 2)
    assert found["option"] == "continue_above" and 0.0 < found["value"] < 1.0
    assert prepared.method.options.continue_above == found["value"]
    routes = evaluate(prepared)["routes"]
    assert set(routes) == {"2L4H", "2L4H>4L4H"}  # ...and the threshold found splits the samples
    assert main(["evaluate", str(runs / "dht"), "--cost-weight", "1000", "--continue-above", "0.5",
                 "--budget", "0.5", "--quiet"]) == 2
    assert "--budget sets --continue-above itself" in capsys.readouterr().err


def test_the_extreme_cost_weights_choose_the_cheapest_and_the_dearest_arm(runs):
    prepared = load_run(runs / "dht")
    method = prepared.method
    for weight, expected in ((1000.0, "2L4H"), (-1000.0, "4L4H")):
        method.set_inference_options(cost_weight=weight)
        assert set(evaluate(prepared)["routes"]) == {expected}


def test_oracles_bound_every_route(runs):
    prepared = load_run(runs / "dht")
    dynamic = evaluate(prepared)
    oracle = oracle_scores(prepared)
    assert list(oracle["routes"]) == ["2L4H", "4L3H", "4L4H"]
    best = max(route["accuracy"] for route in oracle["routes"].values())
    assert oracle["oracle_correct"]["accuracy"] >= max(best, dynamic["accuracy"])
    cheapest = min(route["flop_ratio"] for route in oracle["routes"].values())
    assert cheapest - 1e-9 <= oracle["oracle_correct"]["flop_ratio"] <= 1.0
    assert sum(oracle["oracle_correct"]["shares"].values()) == pytest.approx(1.0, abs=1e-3)
    # The full-depth, all-heads arm always agrees with the full model: every sample has an agreeing route.
    assert oracle["oracle_agrees_with_full"]["flop_ratio"] <= oracle["routes"]["4L4H"]["flop_ratio"] + 1e-9


def test_fastbert_oracle_exits_and_the_cli(runs, capsys):
    assert main(["evaluate", str(runs / "fastbert"), "--oracle", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "oracle_correct: macro-F1" in out and "oracle_agrees_with_full" in out
    metrics = json.loads((runs / "fastbert" / "metrics.json").read_text())
    routes = metrics["test"]["oracle"]["routes"]
    assert list(routes) == ["1L", "2L", "3L", "4L"]
    assert routes["1L"]["flop_ratio"] < routes["2L"]["flop_ratio"] < routes["4L"]["flop_ratio"]
    # The last exit is the full model: the oracle that agrees with it costs at most that.
    assert metrics["test"]["oracle"]["oracle_agrees_with_full"]["flop_ratio"] <= routes["4L"]["flop_ratio"]
    assert main(["evaluate", str(runs / "bl1"), "--oracle", "--quiet"]) == 2
    assert "has one route" in capsys.readouterr().err
    assert main(["evaluate", str(runs / "bl1"), "--budget", "0.5", "--quiet"]) == 2
    assert "has no knob" in capsys.readouterr().err


def test_held_out_rows_are_a_seeded_part_of_the_training_split_in_file_order():
    from dht.data import TextSplit
    split = TextSplit(texts=tuple(f"t{i}" for i in range(10)), labels=tuple(i % 3 for i in range(10)),
                      path=Path("train.csv"))
    rest, held = split.split_off(3, seed=4)
    again = split.split_off(3, seed=4)
    assert (rest, held) == again and len(held) == 3 and len(rest) == 7
    assert sorted(rest.texts + held.texts, key=lambda t: int(t[1:])) == list(split.texts)
    assert list(held.texts) == sorted(held.texts, key=lambda t: int(t[1:]))  # file order kept
    assert [split.labels[split.texts.index(t)] for t in held.texts] == list(held.labels)
    assert split.split_off(3, seed=5)[1] != held
    with pytest.raises(ValueError, match="--holdout 10 keeps every one of the 10 training rows"):
        split.split_off(10, seed=0)


def test_a_run_with_held_out_rows_trains_without_them_and_sets_its_knob_on_them(tmp_path):
    settings = TrainConfig(epochs=1, batch_size=8, max_train=48, max_test=16, seed=2, holdout=12)
    run = RunConfig(method="dht", backbone="tiny", train=settings, options={"config": "f-dht"})
    metrics = train(run, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "decisions.jsonl").read_text().splitlines()]
    assert len({r["index"] for r in records}) == 36 and metrics["train"]["samples"] == 36
    assert json.loads((tmp_path / "run" / "run.json").read_text())["run"]["train"]["holdout"] == 12
    prepared = load_run(tmp_path / "run")
    assert len(prepared.train) == 36 and len(prepared.holdout) == 12
    at_training = prepare(run)  # the rows kept out while training are the ones evaluation searches on
    assert at_training.holdout.ids == prepared.holdout.ids and at_training.train.ids == prepared.train.ids
    assert not set(map(tuple, prepared.holdout.ids)) & set(map(tuple, prepared.train.ids))
    found = budget_search(prepared, 0.5)
    assert (found["rows"], found["train_rows"]) == ("holdout", 12)


def test_without_held_out_rows_the_knob_is_set_on_training_rows(runs, monkeypatch):
    import dht.training.operating as operating

    seen = []

    def balanced(prediction, labels):
        seen.append((len(labels), class_balanced_ratio(prediction, labels)))
        return seen[-1][1]

    monkeypatch.setattr(operating, "class_balanced_ratio", balanced)
    found = budget_search(load_run(runs / "dht"), 0.5)
    assert (found["rows"], found["train_rows"]) == ("train", 160)
    assert (160, found["train_flop_ratio_all_in"]) in seen  # the ratio searched is the class-balanced one


def test_a_negative_holdout_is_one_line(tmp_path, capsys):
    assert main(["train", "--backbone", "tiny", "--holdout", "-1", "--output", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == "dht: error: --holdout must be >= 0, got -1"
    assert not (tmp_path / "r").exists()
