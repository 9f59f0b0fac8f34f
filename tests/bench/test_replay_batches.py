"""bench/replay_batches.py: BL1's network trained on a DHT run's steps (its samples, and optionally its depths)."""

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import random_batch

from dht.training.config import RunConfig, TrainConfig
from dht.training.loop import train

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "replay_batches.py"
spec = importlib.util.spec_from_file_location("replay_batches", SCRIPT)
replay_batches = importlib.util.module_from_spec(spec)
sys.modules["replay_batches"] = replay_batches  # its dataclass looks its module up there
spec.loader.exec_module(replay_batches)


@pytest.fixture(scope="module")
def dht_run(tmp_path_factory):
    small = TrainConfig(epochs=2, batch_size=8, max_train=40, max_test=16, seed=2)
    output = tmp_path_factory.mktemp("dht") / "run"
    train(RunConfig(method="dht", backbone="tiny", train=small, options={"config": "f-dht"}), output, progress=False)
    return output


def replay(dht_run, output, *flags, monkeypatch):
    monkeypatch.setattr("sys.argv", ["replay_batches.py", str(dht_run), "--output", str(output), *flags])
    replay_batches.main()
    log = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    return json.loads((output / "replay.json").read_text())["result"], log


def test_steps_are_read_per_epoch_with_their_depth(dht_run):
    steps = replay_batches.replay_steps(dht_run / "decisions.jsonl")
    decisions = [json.loads(line) for line in (dht_run / "decisions.jsonl").read_text().splitlines()]
    assert sorted(steps) == [0, 1]
    for epoch_steps in steps.values():
        assert sorted(i for samples, _ in epoch_steps for i in samples) == list(range(40))  # each sample once
    first = [d for d in decisions if d["step"] == 1]
    assert steps[0][0] == ([d["index"] for d in first], first[0]["depth"])


def test_shuffling_keeps_sizes_depths_and_samples():
    steps = [([0, 1, 2], 2), ([3, 4], 4), ([5, 6, 7, 8], 2)]
    dealt = replay_batches.shuffled_steps(steps, seed=1)
    assert [(len(s), d) for s, d in dealt] == [(3, 2), (2, 4), (4, 2)]
    assert sorted(i for s, _ in dealt for i in s) == list(range(9))
    assert dealt != steps


def test_class_skew_of_one_class_steps_is_one():
    labels = [0, 0, 1, 1, 2, 2, 3, 3]
    skew, shuffled = replay_batches.class_skew([[0, 1], [2, 3], [4, 5]], labels)
    assert skew == 1.0 and 0.5 <= shuffled <= 1.0


def test_replay_trains_on_the_dht_steps(dht_run, tmp_path, monkeypatch):
    sizes = Counter(json.loads(line)["step"] for line in (dht_run / "decisions.jsonl").read_text().splitlines())
    result, log = replay(dht_run, tmp_path / "same", monkeypatch=monkeypatch)
    assert [r["samples"] for r in log] == [sizes[s] for s in sorted(sizes)]
    assert all(r["flop_ratio"] == pytest.approx(1.0) for r in log)  # every layer and head
    assert result["steps"] == len(sizes) and 0 <= result["f1_macro"] <= 1


def test_replay_with_depths_runs_each_step_at_its_depth(dht_run, tmp_path, monkeypatch):
    steps = replay_batches.replay_steps(dht_run / "decisions.jsonl")
    depths = [depth for epoch in sorted(steps) for _, depth in steps[epoch]]
    _, log = replay(dht_run, tmp_path / "deep", "--depths", "--shuffle", monkeypatch=monkeypatch)
    metrics = json.loads((tmp_path / "deep" / "metrics.json").read_text())
    assert metrics["test"]["flop_ratio"] == pytest.approx(1.0)  # evaluated at full depth
    assert len(set(depths)) > 1  # the test means something only if the DHT run used several depths
    assert [round(r["flop_ratio"] * 4) for r in log] == depths  # the tiny backbone has 4 layers


@pytest.mark.parametrize("detach", [False, True])
def test_detached_shallow_steps_train_the_classifier_only(tiny_model, dht_run, detach):
    ids, mask = random_batch()
    batch = replay_batches.ReplayedBatch(ids, mask, torch.tensor([0, 1, 2, 0, 1]), torch.arange(5), depth=2)
    options = {"replay": str(dht_run), "depths": True, "detach_shallow": detach}
    method = replay_batches.Replay(tiny_model.train(), RunConfig(method="replay", backbone="tiny", options=options))
    method.training_step(batch).loss.backward()
    assert tiny_model.classifier.weight.grad is not None
    layer_grads = [p.grad for p in tiny_model.layers[0].parameters()]
    assert all(g is None for g in layer_grads) == detach


def test_a_folder_that_is_not_a_dht_run_stops_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["replay_batches.py", str(tmp_path), "--output", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as stop:
        replay_batches.main()
    assert stop.value.code == 2 and "has no run.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
