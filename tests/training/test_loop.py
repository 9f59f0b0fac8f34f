"""The training loop on the tiny backbone: it learns, resumes exactly, and reports what users expect."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dht.cli import main
from dht.training.config import RunConfig, TrainConfig
from dht.training.hooks import make_method
from dht.training.loop import RunExistsError, evaluate_run, learning_rate, train
from dht.training.setup import prepare

SMALL = TrainConfig(epochs=2, batch_size=16, max_train=64, max_test=48, checkpoint_every=3, seed=3)


def small_run(**changes) -> RunConfig:
    return RunConfig(backbone="tiny", train=SMALL, **changes)


def test_one_step_changes_the_parameters(tmp_path):
    prepared = prepare(small_run())
    before = {k: v.clone() for k, v in prepared.model.state_dict().items()}
    train(small_run(), tmp_path / "run", stop_after_steps=1, progress=False)
    after = load_file(str(tmp_path / "run" / "checkpoint" / "model.safetensors"))
    assert torch.equal(before["embeddings.word.weight"], after["embeddings.word.weight"])  # frozen by default
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "classifier.weight" in changed and "layers.3.ffn_out.weight" in changed
    assert "embeddings.position.weight" in changed


def test_run_folder_and_metrics(tmp_path):
    metrics = train(small_run(), tmp_path / "run", progress=False)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"run.json", "model.safetensors", "metrics.json", "log.jsonl", "loss.png", "tokenizer.json"} <= files
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved["test"]) >= {"accuracy", "f1_macro", "flop_ratio", "seconds", "samples"}
    assert set(saved["train"]) >= {"flop_ratio", "seconds", "samples", "epochs"}
    assert saved["train"]["flop_ratio"] == pytest.approx(1.0) and saved["test"]["flop_ratio"] == pytest.approx(1.0)
    assert saved["test"]["samples"] == 48 and saved["train"]["samples"] == 128
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))
    again = evaluate_run(tmp_path / "run", progress=False)
    assert again["test"]["accuracy"] == pytest.approx(saved["test"]["accuracy"])


def test_resume_equals_an_uninterrupted_run(tmp_path):
    whole = train(small_run(), tmp_path / "whole", progress=False)
    assert train(small_run(), tmp_path / "cut", stop_after_steps=5, progress=False) is None
    resumed = train(small_run(), tmp_path / "cut", resume=True, progress=False)
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test"]["accuracy"] == whole["test"]["accuracy"]
    losses = lambda run: [json.loads(l)["loss"] for l in (tmp_path / run / "log.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses("whole") == losses("cut")


def test_existing_run_is_not_overwritten(tmp_path):
    train(small_run(), tmp_path / "run", stop_after_steps=1, progress=False)
    with pytest.raises(RunExistsError):
        train(small_run(), tmp_path / "run", progress=False)


def test_learning_rate_warms_up_then_decays():
    rates = [learning_rate(step, 100, 1.0, 0.1) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[10] > rates[50] > rates[99] > 0


def test_unknown_method_is_rejected():
    prepared = prepare(small_run())
    with pytest.raises(ValueError, match="unknown method"):
        make_method(prepared.model, RunConfig(method="nope"))


@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such/dir"], "/no/such/dir"),
    (["--backbone", "missing-model"], "unknown backbone"),
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--max-length", "1"], "max-length"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, args, message):
    output = tmp_path / "out"
    code = main(["train", "--backbone", "tiny", "--output", str(output), "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and err.startswith("dht: error:") and message in err
    assert not output.exists()


def test_cli_bad_csv_names_file_and_line(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "classes.txt").write_text("a\nb\n")
    (data / "train.csv").write_text("label,text\n1,fine\n3,bad label\n")
    (data / "test.csv").write_text("label,text\n1,fine\n")
    assert main(["train", "--backbone", "tiny", "--data", str(data), "--output", str(tmp_path / "o"), "--quiet"]) == 2
    assert "train.csv:3:" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
