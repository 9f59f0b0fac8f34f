"""Run folders that survive kills and mistakes (issue 20, faults 1, 3 and 7): a run killed before its first
checkpoint starts again, a kill between the checkpoint's two renames resumes, a finished run is not resumed,
--resume refuses flags that change the run, and a non-finite loss stops the run with exit 2 naming the step."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import dht.training.loop as loop
from dht.cli import main
from dht.training.checkpoint import latest_checkpoint
from dht.training.config import RunConfig, TrainConfig
from dht.training.loop import train

SMALL = TrainConfig(epochs=2, batch_size=16, max_train=64, max_test=32, checkpoint_every=3, seed=7)
RUN = RunConfig(backbone="tiny", train=SMALL)


def models_equal(a, b) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies while writing its first checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        train(RUN, tmp_path / "run", progress=False)
    monkeypatch.undo()
    assert (tmp_path / "run" / "run.json").is_file() and latest_checkpoint(tmp_path / "run") is None
    with pytest.raises(ValueError, match="stopped before its first checkpoint: run it again without --resume"):
        train(RUN, tmp_path / "run", resume=True, progress=False)
    train(RUN, tmp_path / "run", progress=False)  # started again from scratch
    train(RUN, tmp_path / "whole", progress=False)
    assert models_equal(tmp_path / "run", tmp_path / "whole")


def test_a_kill_between_the_checkpoint_renames_resumes_from_the_previous_one(tmp_path):
    train(RUN, tmp_path / "cut", stop_after_steps=5, progress=False)
    (tmp_path / "cut" / "checkpoint").rename(tmp_path / "cut" / "checkpoint.old")  # as a kill would leave it
    assert latest_checkpoint(tmp_path / "cut").name == "checkpoint.old"
    train(RUN, tmp_path / "cut", resume=True, progress=False)
    train(RUN, tmp_path / "whole", progress=False)
    assert models_equal(tmp_path / "cut", tmp_path / "whole")


def test_a_finished_run_is_neither_resumed_nor_overwritten(tmp_path, capsys):
    train(RUN, tmp_path / "run", progress=False)
    assert latest_checkpoint(tmp_path / "run") is None  # removed once finished: it could not be resumed
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert main(["train", "--resume", "--output", str(tmp_path / "run")]) == 2
    assert "the run is finished" in capsys.readouterr().err
    assert main(["train", "--backbone", "tiny", "--output", str(tmp_path / "run")]) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_a_foreign_config_json_is_never_deleted(tmp_path, capsys):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    assert main(["train", "--backbone", "tiny", "--output", str(folder)]) == 2
    assert "is not a dht run's settings" in capsys.readouterr().err
    assert (folder / "config.json").read_text() == '{"model_type": "bert"}'


def test_resume_refuses_flags_that_change_the_run(tmp_path, capsys):
    argv = ["train", "--resume", "--output", str(tmp_path / "run")]
    assert main([*argv, "--method", "dht", "--config", "t-dht", "--data", "x", "--epochs", "1", "--lr", "5e-3"]) == 2
    err = capsys.readouterr().err
    assert "drop --method, --config, --data, --epochs, --lr" in err and err.count("\n") == 1
    assert main([*argv, "--lr=0.1"]) == 2 and "drop --lr" in capsys.readouterr().err
    # --device and --quiet change no result: they pass the check (and the run is then looked for).
    assert main([*argv, "--device", "cpu", "--quiet"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_it_starts_again(tmp_path, capsys):
    argv = ["train", "--backbone", "tiny", "--max-train", "64", "--max-test", "16", "--batch-size", "8",
            "--lr", "1e30", "--save-every", "1", "--quiet", "--output", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    step = int(err.split("step ")[1].split(":")[0])
    assert "is not finite" in err and err.count("\n") == 1
    assert "run it again with a lower --lr (with the same --output " in err and "the run starts afresh)" in err
    stopped = json.loads((tmp_path / "run" / "stopped.json").read_text())
    assert stopped["where"] == f"step {step}" and not (tmp_path / "run" / "metrics.json").exists()
    # step 1's update made the weights huge but finite; step 2's loss overflowed: the checkpoint of step 1
    # holds the weights that did it, so it is not offered
    state = json.loads((latest_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert step == 2 and state["counters"]["step"] == 1 and not stopped["resumable"]
    assert main(["train", "--resume", "--lr", "1e-4", "--output", str(tmp_path / "run")]) == 2
    assert "no checkpoint to go back to" in capsys.readouterr().err
    argv[argv.index("1e30")] = "1e-4"
    assert main(argv) == 0  # the same folder, started afresh
    assert not (tmp_path / "run" / "stopped.json").exists() and (tmp_path / "run" / "metrics.json").is_file()
    assert main(["train", "--backbone", "tiny", "--lr", "inf", "--output", str(tmp_path / "x")]) == 2
    assert "--lr must be finite and > 0" in capsys.readouterr().err


def test_a_run_stopped_after_good_steps_resumes_its_checkpoint_with_a_lower_learning_rate(tmp_path, capsys,
                                                                                           monkeypatch):
    from dht.methods.full import FullMethod
    step = FullMethod.training_step
    calls = []

    def diverging(self, batch):  # the eighth step's loss is not finite
        calls.append(1)
        result = step(self, batch)
        if len(calls) == 8:
            result.loss = result.loss * float("nan")
        return result
    monkeypatch.setattr(FullMethod, "training_step", diverging)
    output = tmp_path / "run"
    with pytest.raises(loop.NonFiniteError, match=r"step 8: .*resume the checkpoint of step 6 with a lower peak"):
        train(RUN, output, progress=False)
    monkeypatch.undo()
    assert json.loads((output / "stopped.json").read_text())["resumable"]
    base = ["train", "--resume", "--output", str(output), "--quiet"]
    assert main(base + ["--epochs", "3"]) == 2  # only --lr may come with it
    assert "drop --epochs" in capsys.readouterr().err
    assert main(base + ["--lr", "2e-5"]) == 0
    assert json.loads((output / "run.json").read_text())["run"]["train"]["lr"] == 2e-5
    assert not (output / "stopped.json").exists()
    log = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, len(log) + 1))  # steps 7 and 8 were redone
    assert all(r["lr"] <= 2e-5 for r in log[6:]) and any(r["lr"] > 2e-5 for r in log[:6])
    assert main(["train", "--resume", "--lr", "1e-5", "--output", str(output)]) == 2  # finished: no stop to resume
    assert "drop --lr" in capsys.readouterr().err


def test_weights_that_stop_being_finite_stop_the_step_that_made_them(tmp_path):
    with pytest.raises(loop.NonFiniteError, match=r"step 1: the weights are not finite after this step's update"):
        train(RunConfig(backbone="tiny", train=TrainConfig(epochs=1, batch_size=64, max_train=64, max_test=8,
                                                           lr=1e308)), tmp_path / "run", progress=False)
    assert latest_checkpoint(tmp_path / "run") is None  # nothing of the step was saved


def test_a_model_whose_outputs_diverge_at_the_end_stops_without_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "weights_finite", lambda model: True)  # huge weights slip through: outputs overflow
    with pytest.raises(loop.NonFiniteError, match=r"after its last step: the model's outputs are not finite"):
        train(RunConfig(backbone="tiny", train=TrainConfig(epochs=1, batch_size=64, max_train=64, max_test=8,
                                                           lr=1e20)), tmp_path / "run", progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "run" / "metrics.json").exists()
    train(RunConfig(backbone="tiny", train=TrainConfig(epochs=1, batch_size=64, max_train=64, max_test=8)),
          tmp_path / "run", progress=False)  # started afresh in the same folder
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_dht_with_diverged_weights_stops_naming_the_step(tmp_path):
    run = RunConfig(method="dht", backbone="tiny", options={"config": "s-dht"},
                    train=TrainConfig(epochs=2, batch_size=8, max_train=48, max_test=8, lr=1e4))
    with pytest.raises(loop.NonFiniteError, match=r"step \d+: .*not finite"):
        train(run, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "stopped.json").read_text())["where"].startswith("step ")


def test_fastberts_stop_names_its_own_learning_rate_flag(tmp_path):
    train(RUN, tmp_path / "bl1", progress=False)
    run = RunConfig(method="fastbert", backbone="tiny", train=SMALL,
                    options={"teacher": str(tmp_path / "bl1"), "branch_lr": 1e30})
    with pytest.raises(loop.NonFiniteError, match=r"run it again with a lower --branch-lr"):
        train(run, tmp_path / "run", progress=False)


def test_run_json_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import dht.provenance as provenance
    real = provenance.os.replace

    def killed(source, target):
        raise KeyboardInterrupt  # the kill comes before the rename
    monkeypatch.setattr(provenance.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        train(RUN, tmp_path / "run", progress=False)
    monkeypatch.setattr(provenance.os, "replace", real)
    assert not (tmp_path / "run" / "run.json").exists()
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".run.json")]
    assert main(["train", "--backbone", "tiny", "--max-train", "32", "--max-test", "8", "--epochs", "1", "--quiet",
                 "--output", str(tmp_path / "run")]) == 0


def test_a_bad_option_in_run_json_names_the_file(tmp_path, capsys):
    train(RUN, tmp_path / "run", stop_after_steps=2, progress=False)
    settings = json.loads((tmp_path / "run" / "run.json").read_text())
    settings["run"]["options"]["colour"] = 1
    (tmp_path / "run" / "run.json").write_text(json.dumps(settings))
    assert main(["train", "--resume", "--output", str(tmp_path / "run"), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(f"dht: error: {tmp_path / 'run' / 'run.json'}: method full takes no")


def test_a_damaged_metrics_file_is_named_before_the_oracles_run(tmp_path, capsys):
    run = RunConfig(method="dht", backbone="tiny", options={"config": "f-dht"},
                    train=TrainConfig(epochs=1, batch_size=8, max_train=32, max_test=8))
    train(run, tmp_path / "run", progress=False)
    text = (tmp_path / "run" / "metrics.json").read_text()
    (tmp_path / "run" / "metrics.json").write_text(text[: len(text) // 2])
    assert main(["evaluate", str(tmp_path / "run"), "--oracle", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dht: error: {tmp_path / 'run' / 'metrics.json'}: damaged") and err.count("\n") == 1


def test_the_data_folder_is_recorded_absolute(tmp_path, monkeypatch):
    from dht.data import default_dataset_dir
    monkeypatch.chdir(default_dataset_dir().parent)
    train(RunConfig(backbone="tiny", data="ag_news", train=SMALL), tmp_path / "run", stop_after_steps=1,
          progress=False)
    settings = json.loads((tmp_path / "run" / "run.json").read_text())
    assert settings["run"]["data"] == str(default_dataset_dir().resolve())
    assert settings["dataset"]["path"] == str(default_dataset_dir().resolve())


def test_sigterm_stops_a_run_as_ctrl_c_does_and_it_resumes(tmp_path):
    argv = [sys.executable, "-m", "dht", "train", "--backbone", "tiny", "--max-train", "4000", "--epochs", "3",
            "--batch-size", "8", "--save-every", "5", "--quiet", "--output", str(tmp_path / "run")]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while latest_checkpoint(tmp_path / "run") is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143 and "interrupted; continue with --resume" in err  # 128 + SIGTERM
    assert latest_checkpoint(tmp_path / "run") is not None and not (tmp_path / "run" / "metrics.json").exists()


def test_evaluate_refuses_other_class_names_or_order(tmp_path, capsys):
    from dht.data import default_dataset_dir
    train(RUN, tmp_path / "run", progress=False)
    data = tmp_path / "data"
    shutil.copytree(default_dataset_dir(), data)
    names = (data / "classes.txt").read_text().split()
    (data / "classes.txt").write_text("\n".join([names[1], names[0], *names[2:]]) + "\n")
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(data), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{data / 'classes.txt'}: names ['Sports', 'World'" in err and "(same names, same order)" in err
    assert not (tmp_path / "run" / "evaluation.json").exists()


def test_a_tokenizer_larger_than_the_embedding_table_is_refused_before_training(tmp_path, capsys):
    from dht.model.backbones import minilm_dir
    folder = tmp_path / "small-vocab"
    folder.mkdir()
    shutil.copy(minilm_dir() / "tokenizer.json", folder / "tokenizer.json")
    config = json.loads((minilm_dir() / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    weights = load_file(str(minilm_dir() / "model.safetensors"))
    weights["embeddings.word_embeddings.weight"] = weights["embeddings.word_embeddings.weight"][:1000].clone()
    save_file(weights, str(folder / "model.safetensors"))
    assert main(["train", "--backbone", str(folder), "--output", str(tmp_path / "run")]) == 2
    assert "the tokenizer has 30522 tokens but the backbone's embedding table has 1000 rows" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("victim", ["checkpoint/model.safetensors", "checkpoint/state.safetensors",
                                    "checkpoint/state.json", "run.json"])
def test_a_damaged_file_is_named_in_one_line(tmp_path, capsys, victim):
    train(RUN, tmp_path / "run", stop_after_steps=2, progress=False)
    path = tmp_path / "run" / victim
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # cut in half, as a full disk would
    assert main(["train", "--resume", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err


def test_a_damaged_model_of_a_finished_run_is_named(tmp_path, capsys):
    train(RUN, tmp_path / "run", progress=False)
    path = tmp_path / "run" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    assert main(["evaluate", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: cannot load this run's weights" in err


def test_evaluate_needs_only_the_test_split_and_scores_all_of_another_dataset(tmp_path, capsys):
    from dht.data import default_dataset_dir
    train(RUN, tmp_path / "run", progress=False)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(default_dataset_dir() / "classes.txt", data / "classes.txt")
    rows = (default_dataset_dir() / "test.csv").read_text().splitlines()[:50]
    (data / "test.csv").write_text("\n".join(rows) + "\n")
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(data), "--quiet",
                 "--output", str(tmp_path / "e.json")]) == 0
    from dht.data import read_dataset
    rows_read = len(read_dataset(data, need_train=False).test)
    assert rows_read > 32  # more than the run's --max-test: all of them are scored
    assert json.loads((tmp_path / "e.json").read_text())["test"]["samples"] == rows_read
    fastbert = RunConfig(method="fastbert", backbone="tiny", train=SMALL, options={"teacher": str(tmp_path / "run")})
    train(fastbert, tmp_path / "fastbert", progress=False)
    assert main(["evaluate", str(tmp_path / "fastbert"), "--data", str(data), "--budget", "0.5", "--quiet"]) == 2
    assert f"{data / 'train.csv'} is missing" in capsys.readouterr().err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    path = tmp_path_factory.mktemp("finished") / "run"
    train(RUN, path, progress=False)
    return path


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["run"]["train"].update(lr="abc"), "field run.train.lr: Input should be a valid number"),
    (lambda d: d["run"]["train"].update(epochs=2.5), "field run.train.epochs: Input should be a valid integer"),
    (lambda d: d["run"]["train"].update(colour=1), "field run.train.colour: Unexpected keyword argument"),
    (lambda d: d["run"].update(options=[1]), "field run.options: Input should be a valid dictionary"),
    (lambda d: d["encoder"].update(num_heads="many"), "field encoder.num_heads: Input should be a valid integer"),
    (lambda d: d["encoder"].update(hidden_dropout=2.0), "field encoder: EncoderConfig.hidden_dropout must be in"),
    (lambda d: d["dataset"].update(classes=4), "field dataset.classes: Input should be a valid tuple"),
    (lambda d: d.pop("dataset"), "field dataset: Field required"),
    (lambda d: d.update(run=[]), "field run: Input should be a dictionary"),
])
def test_every_field_of_run_json_is_checked_and_named(finished, tmp_path, capsys, edit, field):
    """Issue 20, item 2: run.json against its schema (dht/schema.py); before, these were tracebacks
    (TypeError from a comparison or a ``**`` unpacking) or, for an unknown key, an unnamed field."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    settings = json.loads((run / "run.json").read_text())
    edit(settings)
    (run / "run.json").write_text(json.dumps(settings))
    before = sorted(p.name for p in run.iterdir())
    assert main(["evaluate", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run / 'run.json'}: not a dht run's settings ({field}" in err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written


def test_the_schema_accepts_what_means_the_same_and_names_the_path():
    from dht.schema import SchemaError, validated

    config = validated(RunConfig, {"train": {"lr": 1, "epochs": 2.0, "max_test": None}})
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float) and config.train.epochs == 2
    assert config == RunConfig(train=TrainConfig(lr=1.0))
    with pytest.raises(SchemaError, match=r"^field at\.train\.seed: Input should be a valid integer"):
        validated(RunConfig, {"train": {"seed": "x"}}, at="at")


def test_a_checkpoint_whose_state_has_a_wrong_field_is_named(tmp_path, capsys):
    """state.json parses but is not what save_checkpoint wrote (dht.training.checkpoint.CheckpointState)."""
    train(RUN, tmp_path / "run", stop_after_steps=2, progress=False)
    path = tmp_path / "run" / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    state["counters"]["step"] = "two"
    path.write_text(json.dumps(state))
    assert main(["train", "--resume", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: damaged or not the file it should be (field counters.step:" in err


def test_a_log_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    train(RUN, tmp_path / "run", stop_after_steps=4, progress=False)
    shutil.copytree(tmp_path / "run", tmp_path / "bad")  # the same stopped run, for a damaged middle line
    with open(tmp_path / "run" / "log.jsonl", "a", encoding="utf-8") as log:
        log.write('{"epoch": 1, "step": 5, "lo')  # the kill came mid-line
    metrics = train(RUN, tmp_path / "run", resume=True, progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert metrics is not None and steps == list(range(1, steps[-1] + 1))
    # a damaged line in the middle is named, not skipped
    text = (tmp_path / "bad" / "log.jsonl").read_text().splitlines()
    (tmp_path / "bad" / "log.jsonl").write_text("\n".join(text[:2] + ["{oops"] + text[2:]) + "\n")
    with pytest.raises(ValueError, match=r"log.jsonl, line 3: not a JSON record"):
        train(RUN, tmp_path / "bad", resume=True, progress=False)
