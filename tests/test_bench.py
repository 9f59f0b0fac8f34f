"""`dht bench`'s bookkeeping (dht/benchmark/__init__.py): which runs, reused only when their settings are the
entry's, evaluated with the entry's inference options, and a seed's timing kept so a stopped bench goes on."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

import dht.benchmark as bench
import dht.benchmark.front as bench_front
from dht.cli import main
from dht.training.config import RunConfig, TrainConfig


def save_run(folder: Path, run: RunConfig, drop: tuple[str, ...] = ()) -> Path:
    """A run folder's run.json as training writes its ``run`` part; ``drop``: options it predates."""
    folder.mkdir(parents=True)
    saved = run.to_dict()
    saved["options"] = {k: v for k, v in saved["options"].items() if k not in drop}
    (folder / "run.json").write_text(json.dumps({"run": saved}), encoding="utf-8")
    return folder


def entry(name: str):
    return next(e for e in bench.entries(6, Path("bl1")) if e.name == name)


def test_methods_keep_bl1_first_and_only_the_named_methods_runs():
    names = [(e.method, e.name) for e in bench.entries(6, Path("bl1"), ("fastbert", "distil"))]
    assert names == [("full", "full"), ("distil", "distil-1"), ("distil", "distil-3"),
                     ("fastbert", "fastbert-0.1"), ("fastbert", "fastbert-0.5"), ("fastbert", "fastbert-0.8")]
    assert len(bench.entries(6, Path("bl1"))) > len(names)
    with pytest.raises(ValueError, match="--methods: nosuch is not a method"):
        bench.entries(6, Path("bl1"), ("dht", "nosuch"))


def test_a_saved_run_is_compared_on_its_training_settings_with_defaults_filled_in(tmp_path):
    wanted = replace(RunConfig(method="dht", options=dict(entry("f-dht-wu-fine").options)), train=TrainConfig(seed=1))
    older = save_run(tmp_path / "older", wanted, drop=("full_depth_warmup", "warmup_lr", "layer_lr_cap"))
    # A run saved before an option existed holds its default: the same as asking for the default.
    default = {k: v for k, v in wanted.options.items() if k not in ("full_depth_warmup", "warmup_lr")}
    assert bench.settings_differ(older, replace(wanted, options=default)) is None
    assert bench.settings_differ(older, wanted) == "option full_depth_warmup 0.0, not 0.5"
    same = save_run(tmp_path / "same", wanted)
    assert bench.settings_differ(same, wanted) is None
    # What evaluation may change (cost weight, threshold) and the teacher's path are not training settings.
    assert bench.settings_differ(same, replace(wanted, options={**wanted.options, "cost_weight": 0.0,
                                                                "continue_above": 1.0})) is None
    assert bench.settings_differ(same, replace(wanted, options={**wanted.options, "self_distill": 0.0})) \
        == "option self_distill 1.0, not 0.0"
    assert bench.settings_differ(same, replace(wanted, train=TrainConfig(seed=2))) == "train.seed 1, not 2"
    assert bench.settings_differ(same, replace(wanted, backbone="tiny")) == "backbone 'minilm-l6', not 'tiny'"
    student = RunConfig(method="distil", options={"teacher": "a/full", "layers": 3})
    saved = save_run(tmp_path / "student", student)
    assert bench.settings_differ(saved, replace(student, options={"teacher": "b/full", "layers": 3})) is None


def test_a_folder_of_other_settings_in_any_seed_stops_the_bench_before_anything_trains(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(bench, "train", lambda *args, **kwargs: trained.append(args))
    seed1 = RunConfig(backbone="tiny", train=TrainConfig(seed=1, max_train=1000, max_test=500, epochs=1))
    save_run(tmp_path / "runs" / "seed1" / "distil-2", replace(seed1, method="distil", options={"layers": 3}))
    with pytest.raises(ValueError, match=r"seed1/distil-2: trained with option layers 3, not 2 \(the bench's "):
        bench.run_bench("", "tiny", tmp_path, quick=True, seeds=(0, 1), progress=False, methods=("distil",))
    assert trained == []  # seed 0's folders were fine, and nothing of it trained either
    # Settings a trained run does not depend on (evaluation's batch size, checkpoint interval) are not compared.
    other = replace(seed1, method="distil", options={"layers": 2},
                    train=replace(seed1.train, eval_batch_size=7, checkpoint_every=3))
    assert bench.settings_differ(tmp_path / "runs" / "seed1" / "distil-2", other) == "option layers 3, not 2"
    assert bench.settings_differ(save_run(tmp_path / "same", other), replace(other, train=seed1.train)) is None


def test_an_entry_is_evaluated_with_its_inference_options_then_its_overrides():
    assert bench.inference_options(entry("fastbert-0.8")) == {"speed": 0.8}
    assert bench.inference_options(replace(entry("fastbert-0.8"), overrides={"speed": 0.3})) == {"speed": 0.3}
    assert bench.inference_options(replace(entry("fastbert-0.8"), overrides=None)) == {"speed": 0.8}
    assert bench.inference_options(entry("f-dht-wu-fine")) == {"cost_weight": 1000.0, "continue_above": 0.3}
    assert bench.inference_options(entry("f-dht")) is None
    assert bench.inference_options(entry("full")) is None


def test_a_seeds_timing_is_kept_and_reused_only_for_the_same_runs_and_rounds(tmp_path, monkeypatch):
    calls = []

    def result_rows(runs_dir, runs, rounds, seed, device=None):
        calls.append(rounds)
        return [{"config": "full", "seed": seed, "rounds": rounds, "timed_by": "tree"}], [{"kind": "knob"}]

    monkeypatch.setattr(bench, "result_rows", result_rows)
    runs = bench.entries(6, tmp_path / "full", ("distil",))
    for entry in runs:
        (tmp_path / entry.run).mkdir()
        (tmp_path / entry.run / "metrics.json").write_text('{"train": {}}')
        (tmp_path / entry.run / "model.safetensors").write_text("weights")
    first = bench.seed_results(tmp_path, runs, 2, 0, "cpu")
    assert bench.seed_results(tmp_path, runs, 2, 0, "cpu") == first and calls == [2]
    assert not list(tmp_path.glob("*.partial"))
    assert bench.seed_results(tmp_path, runs, 3, 0, "cpu")[0][0]["rounds"] == 3  # other rounds: timed again
    assert bench.seed_results(tmp_path, runs[:2], 3, 0, "cpu") and calls == [2, 3, 3]  # other runs: again
    assert bench.seed_results(tmp_path, runs[:2], 3, 0, "cpu") and calls == [2, 3, 3]
    (tmp_path / runs[1].run / "metrics.json").write_text('{"train": {"retrained": true}}')
    assert bench.seed_results(tmp_path, runs[:2], 3, 0, "cpu") and calls == [2, 3, 3, 3]  # a run trained anew


def test_an_unknown_method_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["bench", "--methods", "nosuch", "--quick", "--backbone", "tiny", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dht: error: --methods: nosuch is not a method") and "\n" not in err
    assert not list(tmp_path.iterdir())


def test_train_only_trains_every_seed_and_the_next_bench_times_without_training(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.QUICK, "max_train", 32)
    monkeypatch.setitem(bench.QUICK, "max_test", 16)
    methods = ("distil", "fastbert")
    assert bench.run_bench("", "tiny", tmp_path, quick=True, seeds=(0, 1), progress=False, methods=methods,
                           train_only=True) == []
    for seed in (0, 1):
        folders = sorted(p.name for p in (tmp_path / "runs" / f"seed{seed}").iterdir())
        assert folders == ["distil-1", "distil-2", "distil-3", "fastbert", "full"]
    assert not (tmp_path / "front.json").exists()
    # --points-only: the curves (FastBERT's speeds) are kept in the run folders; the timing pass reuses them.
    assert bench.run_bench("", "tiny", tmp_path, quick=True, seeds=(0, 1), progress=False, methods=methods,
                           points_only=True) == []
    assert (tmp_path / "runs" / "seed1" / "fastbert" / "bench_points.json").is_file()

    def no_loading(*args, **kwargs):
        raise AssertionError("a run whose points are kept was loaded again")

    with monkeypatch.context() as patch:  # run again (as beside a training): nothing new, nothing loaded
        patch.setattr(bench, "load_run", no_loading)
        bench.run_bench("", "tiny", tmp_path, quick=True, seeds=(0, 1), progress=False, methods=methods,
                        points_only=True)
    assert not (tmp_path / "front.json").exists() and not (tmp_path / "runs" / "seed0" / bench.SEED_ROWS).exists()

    def no_curves(*args, **kwargs):
        raise AssertionError("kept operating points were evaluated again")

    monkeypatch.setattr(bench_front, "operating_points", no_curves)

    def no_training(*args, **kwargs):
        raise AssertionError("a trained run was trained again")

    loaded, load_run = [], bench.load_run

    def spy(folder, overrides=None, device=None):
        loaded.append((folder.name, overrides))
        return load_run(folder, overrides=overrides, device=device)

    monkeypatch.setattr(bench, "train", no_training)
    monkeypatch.setattr(bench, "load_run", spy)
    rows = bench.run_bench("", "tiny", tmp_path, quick=True, seeds=(0, 1), rounds=1, progress=False, methods=methods)
    configs = ["full", "distil-1", "distil-2", "distil-3", "fastbert-0.1", "fastbert-0.5", "fastbert-0.8"]
    assert [(r["config"], r["seed"]) for r in rows] == [(c, s) for s in (0, 1) for c in configs]
    # FastBERT's one trained folder is evaluated at each row's speed (it was trained with the first's, 0.1).
    assert [o for name, o in loaded[:7] if name == "fastbert"] == [{"speed": 0.1}, {"speed": 0.5}, {"speed": 0.8}]
    front = json.loads((tmp_path / "front.json").read_text())["result"]
    assert [(r["config"], r["seeds"]) for r in front] == [(c, [0, 1]) for c in configs]
    assert (tmp_path / "runs" / "seed1" / bench.SEED_ROWS).is_file()
    loaded.clear()  # a bench run again with nothing new reads the kept rows: nothing is loaded or timed
    assert bench.run_bench("", "tiny", tmp_path, quick=True, seeds=(0, 1), rounds=1, progress=False,
                           methods=methods) == rows and loaded == []


def test_kept_timing_is_keyed_to_the_dht_packages_tree_not_the_commit():
    import subprocess

    from dht.provenance import REPO, package_version

    tree = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD:dht"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert package_version().split("+")[0] == tree  # a commit of docs alone leaves it as it was


def test_each_seed_is_trained_timed_and_written_before_the_next_seed_trains(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(bench, "train_all", lambda base, runs_dir, *a, **k: events.append(("train", runs_dir.name)))

    def seed_results(runs_dir, runs, rounds, seed, device=None):
        events.append(("time", runs_dir.name))
        return [{"seed": seed}], []

    monkeypatch.setattr(bench, "seed_results", seed_results)
    monkeypatch.setattr(bench, "write_outputs", lambda output, rows, *a: events.append(("write", len(rows))))
    rows = bench.run_bench("", "tiny", tmp_path, quick=True, seeds=(0, 1), progress=False, methods=("distil",))
    assert rows == [{"seed": 0}, {"seed": 1}]
    assert events == [("train", "seed0"), ("time", "seed0"), ("write", 1),
                      ("train", "seed1"), ("time", "seed1"), ("write", 2)]
    events.clear()
    assert bench.run_bench("", "tiny", tmp_path, quick=True, seeds=(0, 1), progress=False, methods=("distil",),
                           train_only=True) == []
    assert events == [("train", "seed0"), ("train", "seed1")]


def test_kept_rows_timed_by_other_code_count_only_for_runs_whose_weights_are_gone(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "result_rows", lambda *a, **k: calls.append(1) or ([{"timed": len(calls),
                                                                                     "timed_by": "tree"}], []))
    runs = bench.entries(6, tmp_path / "full", ("distil",))
    for entry in runs:
        (tmp_path / entry.run).mkdir()
        (tmp_path / entry.run / "metrics.json").write_text('{"train": {}}')
        (tmp_path / entry.run / "model.safetensors").write_text("weights")
    monkeypatch.setattr(bench, "package_version", lambda: "tree-a")
    rows = bench.seed_results(tmp_path, runs, 2, 0, "cpu")[0]
    assert rows == [{"timed": 1, "timed_by": "tree"}]
    monkeypatch.setattr(bench, "package_version", lambda: "tree-b")
    assert bench.seed_results(tmp_path, runs, 2, 0, "cpu")[0][0]["timed"] == 2  # weights here: timed again
    (tmp_path / runs[1].run / "model.safetensors").unlink()  # as bench/front_keep.py leaves a seed
    monkeypatch.setattr(bench, "package_version", lambda: "tree-c")
    assert bench.seed_results(tmp_path, runs, 2, 0, "cpu")[0][0]["timed"] == 2 and len(calls) == 2
    with pytest.raises(ValueError, match=r"kept for other rounds than this bench's, and distil-1 has no weights"):
        bench.seed_results(tmp_path, runs, 3, 0, "cpu")  # other rounds: cannot be timed, not counted either


def test_a_runs_points_are_kept_for_the_same_key_only(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench_front, "operating_points", lambda *a, **k: calls.append(1) or [{"n": len(calls)}])
    entry = bench.BenchRun("f-dht", method="dht")
    key = {"entry": "f-dht", "trained": "abc", "code": "tree"}
    assert bench_front.run_points(None, entry, tmp_path, 0, {}, key) == [{"n": 1}]
    assert bench_front.run_points(None, entry, tmp_path, 0, {}, dict(key)) == [{"n": 1}] and calls == [1]
    assert bench_front.run_points(None, entry, tmp_path, 0, {}, {**key, "trained": "retrained"}) == [{"n": 2}]
    assert bench_front.run_points(None, entry, tmp_path, 0, {}, {**key, "code": "other"}) == [{"n": 3}]
    assert not list(tmp_path.glob("*.partial"))


def test_a_runs_training_digest_is_its_training_block_only(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"train": {"seconds": 1.0, "samples": 8}, "test": {"f1": 0.5}}))
    before = bench.training_digest(tmp_path)
    # `dht evaluate RUN --oracle` adds its oracles to metrics.json: the kept rows and points still count.
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"f1": 0.5}, "oracle": {"f1": 0.9},
                                                       "train": {"samples": 8, "seconds": 1.0}}))
    assert bench.training_digest(tmp_path) == before
    (tmp_path / "metrics.json").write_text(json.dumps({"train": {"seconds": 2.0, "samples": 8}}))
    assert bench.training_digest(tmp_path) != before
