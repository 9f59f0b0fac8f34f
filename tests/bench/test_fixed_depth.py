"""bench/fixed_depth.py: a run's network at a fixed depth; at full depth that is BL1's own evaluation."""

import importlib.util
import json
from pathlib import Path

import pytest

from dht.training.config import RunConfig, TrainConfig
from dht.training.loop import train

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "fixed_depth.py"
spec = importlib.util.spec_from_file_location("fixed_depth", SCRIPT)
fixed_depth = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fixed_depth)


def test_full_depth_equals_the_run_and_shallower_costs_less(tmp_path, monkeypatch):
    small = TrainConfig(epochs=1, batch_size=8, max_train=32, max_test=24, seed=3)
    metrics = train(RunConfig(method="full", backbone="tiny", train=small), tmp_path / "run", progress=False)
    output = tmp_path / "fixed.json"
    monkeypatch.setattr("sys.argv", ["fixed_depth.py", str(tmp_path / "run"), "--depths", "1", "4",
                                     "--output", str(output)])
    fixed_depth.main()
    row = json.loads(output.read_text())["result"][0]
    assert row["depth_4"]["f1_macro"] == pytest.approx(metrics["test"]["f1_macro"])  # the tiny model has 4 layers
    assert row["depth_4"]["flop_ratio"] == pytest.approx(1.0)
    assert row["depth_1"]["flop_ratio"] == pytest.approx(0.25, abs=0.01)
