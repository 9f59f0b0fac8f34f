"""The bench's front (dht/benchmark/front.py): costs with teachers, means over seeds, curves, by hand."""

import pytest

from dht.benchmark.front import curve_means, front_rows, front_table, with_teacher


def test_a_teachers_training_is_added_in_the_references_units():
    bl1 = {"flop_ratio_all_in": 1.0, "samples": 100}
    student = {"flop_ratio_all_in": 0.5, "samples": 100}
    assert with_teacher(student, bl1, bl1) == 1.5
    assert with_teacher(student, bl1, None) == 0.5
    longer = {"flop_ratio_all_in": 0.6, "samples": 150}  # 3 epochs where BL1 trained 2: 0.6 of 1.5 BL1s
    assert with_teacher(longer, bl1, None) == pytest.approx(0.9)


def row(config, seed, f1, method="dht"):
    return {"method": method, "config": config, "seed": seed, "f1_macro": f1, "test_flop_ratio_all_in": 0.5 + seed,
            "train_flop_ratio_all_in": 0.7, "train_flop_ratio_with_teacher": 0.7, "test_wall_ratio": 0.6}


def test_front_rows_are_means_and_sample_deviations_over_seeds():
    rows = [row("full", 0, 0.90, "full"), row("f-dht", 0, 0.88), row("f-dht", 1, 0.86), row("f-dht", 2, 0.87)]
    full, dht = front_rows(rows)
    assert full["seeds"] == [0] and full["f1_macro_std"] == 0.0
    assert dht["seeds"] == [0, 1, 2] and dht["f1_macro_mean"] == pytest.approx(0.87)
    assert dht["f1_macro_std"] == pytest.approx(0.01)  # sqrt(((.01)² + (.01)² + 0) / 2)
    assert dht["test_flop_ratio_all_in_mean"] == pytest.approx(1.5)  # 0.5, 1.5, 2.5
    assert "| dht | f-dht | 3 | 0.8700 ± 0.0100 | 1.500 |" in front_table([dht])


def test_curve_means_average_each_knob_value_over_seeds_and_sort_by_cost():
    points = [{"method": "fastbert", "config": "fastbert", "kind": "knob", "value": v, "seed": s,
               "test_flop_ratio_all_in": 1 - v + s / 100, "f1_macro": 0.9 - v / 10} for v in (0.0, 0.5) for s in (0, 1)]
    points.append({"method": "fastbert", "config": "fastbert", "kind": "oracle_correct", "value": None, "seed": 0,
                   "test_flop_ratio_all_in": 0.2, "f1_macro": 0.95})
    curves = curve_means(points)
    assert curves[("fastbert", "fastbert", "knob")] == [(0.5, pytest.approx(0.505), pytest.approx(0.85)),
                                                        (0.0, pytest.approx(1.005), pytest.approx(0.9))]
    assert curves[("fastbert", "fastbert", "oracle_correct")] == [(None, 0.2, 0.95)]


def tiny_f_dht(cost_weight):
    """An untrained tiny F-DHT, prepared for evaluation at ``cost_weight``."""
    from dht.training.config import RunConfig, TrainConfig
    from dht.training.setup import prepare

    return prepare(RunConfig(method="dht", backbone="tiny", options={"config": "f-dht", "cost_weight": cost_weight},
                             train=TrainConfig(max_train=16, max_test=8)))


def test_operating_points_put_the_knob_back_even_when_an_evaluation_fails(monkeypatch):
    import dht.benchmark.front as front
    from dht.training.hooks import BenchRun

    prepared = tiny_f_dht(3.0)
    calls = []

    def failing(_):
        calls.append(prepared.method.options.cost_weight)
        raise RuntimeError("out of memory")
    monkeypatch.setattr(front, "evaluate", failing)
    with pytest.raises(RuntimeError):
        front.operating_points(prepared, BenchRun("f-dht", method="dht", folder="f-dht"), 0, {})
    assert calls == [-10.0] and prepared.method.options.cost_weight == 3.0


def test_the_curves_value_of_the_entry_reuses_its_evaluation_and_oracles_only_where_asked(monkeypatch):
    import dht.benchmark.front as front
    from dht.training.hooks import BenchRun

    prepared = tiny_f_dht(2.0)
    evaluated_at = []

    def evaluate(_):
        evaluated_at.append(prepared.method.options.cost_weight)
        return {"f1_macro": 0.5, "accuracy": 0.5, "flop_ratio": 0.5}

    def no_oracles(_):
        raise AssertionError("oracles scored for an entry without them")

    monkeypatch.setattr(front, "evaluate", evaluate)
    monkeypatch.setattr(front, "oracle_scores", no_oracles)
    timed = {"f1_macro": 0.9, "accuracy": 0.8, "flop_ratio": 0.7, "flop_ratio_all_in": 0.75}
    entry = BenchRun("s-dht", method="dht", folder="s-dht", oracles=False)
    points = front.operating_points(prepared, entry, 0, {}, evaluated=timed)
    assert evaluated_at == [-10.0, -2.0, 0.0, 10.0, 25.0, 50.0]  # not 2.0, the entry's own
    assert [(p["value"], p["f1_macro"], p["test_flop_ratio_all_in"]) for p in points if p["value"] == 2.0] == [
        (2.0, 0.9, 0.75)]
    assert len(points) == 7 and prepared.method.options.cost_weight == 2.0
