"""--device: choosing where a run computes, and the same run on a GPU (those tests need one)."""

import json

import pytest
import torch

from dht.cli import main
from dht.training.config import RunConfig, TrainConfig
from dht.training.loop import evaluate, load_run, train
from dht.training.setup import resolve_device

SMALL = TrainConfig(epochs=1, batch_size=8, max_train=48, max_test=24, seed=2, checkpoint_every=2)
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["tpu", "gpu0", "meta", "cuda:99"])
def test_unknown_or_missing_devices_are_refused(spec):
    with pytest.raises(ValueError, match="--device"):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_without_one_is_a_one_line_error_that_writes_nothing(tmp_path, capsys):
    code = main(["train", "--backbone", "tiny", "--max-train", "16", "--device", "cuda",
                 "--output", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()


def test_metrics_name_the_device(tmp_path):
    metrics = train(RunConfig(backbone="tiny", train=SMALL), tmp_path / "run", progress=False, device="cpu")
    assert metrics["train"]["device"].startswith("cpu (") and metrics["test"]["device"].startswith("cpu (")


@GPU
@pytest.mark.parametrize("method, options", [("full", {}), ("dht", {"config": "f-dht"}), ("dht", {"config": "t-dht"})])
def test_a_run_on_the_gpu_trains_evaluates_and_reloads_on_the_cpu(tmp_path, method, options):
    run = RunConfig(method=method, backbone="tiny", train=SMALL, options=options)
    metrics = train(run, tmp_path / "run", progress=False, device="cuda")
    assert metrics["train"]["device"].startswith("cuda") and 0 < metrics["test"]["flop_ratio"] <= 1
    on_cpu = evaluate(load_run(tmp_path / "run", device="cpu"))
    on_gpu = evaluate(load_run(tmp_path / "run", device="cuda"))
    assert on_gpu["flop_ratio"] == pytest.approx(on_cpu["flop_ratio"], rel=0.05)
    assert abs(on_gpu["accuracy"] - on_cpu["accuracy"]) <= 2 / on_cpu["samples"]  # TF32 may flip a near tie


@GPU
def test_resume_on_the_gpu_equals_an_uninterrupted_gpu_run(tmp_path):
    run = RunConfig(method="dht", backbone="tiny", train=SMALL, options={"config": "s-dht"})
    torch.backends.cudnn.deterministic = True
    whole = train(run, tmp_path / "whole", progress=False, device="cuda")
    assert train(run, tmp_path / "parts", stop_after_steps=2, progress=False, device="cuda") is None
    resumed = train(run, tmp_path / "parts", resume=True, progress=False, device="cuda")
    decisions = [(tmp_path / name / "decisions.jsonl").read_text().splitlines() for name in ("whole", "parts")]
    assert [json.loads(d)["arm"] for d in decisions[0]] == [json.loads(d)["arm"] for d in decisions[1]]
    assert resumed["test"]["accuracy"] == whole["test"]["accuracy"]
