"""bench/front_keep.py: a bench's timed seeds copied without their weights, and a bench on another machine
going on from them."""

import json

import pytest
from test_train_wall import script

import dht.benchmark as bench


def touch(path, text="{}"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def timed(seed_dir, runs):
    """A seed's bench_rows.json naming ``runs`` with their training digests, as the bench keeps them."""
    trained = {run: bench.training_digest(seed_dir / run) for run in runs}
    touch(seed_dir / "bench_rows.json", json.dumps({"trained": trained, "rows": [], "points": []}))


def test_only_the_runs_a_seed_was_timed_with_are_copied_without_weights(tmp_path):
    source = tmp_path / "runs"
    for name in ("seed0/full/run.json", "seed0/full/metrics.json", "seed0/full/model.safetensors",
                 "seed0/full/tokenizer.json", "seed0/full/log.jsonl", "seed0/full/loss.png",
                 "seed0/full/checkpoint/metrics.json",
                 "seed0/f-dht/run.json", "seed0/f-dht/metrics.json", "seed0/f-dht/selection.png",
                 "seed0/other/metrics.json",  # not one of the seed's timed runs
                 "seed1/full/run.json", "seed1/full/metrics.json"):  # seed 1: trained, not timed
        touch(source / name, '{"train": {"seconds": 1}}' if name.endswith("metrics.json") else "{}")
    timed(source / "seed0", ["full", "f-dht"])
    written = script("front_keep").keep(source, tmp_path / "kept")
    assert sorted(map(str, written)) == ["seed0/bench_rows.json", "seed0/f-dht/metrics.json", "seed0/f-dht/run.json",
                                         "seed0/f-dht/selection.png", "seed0/full/metrics.json", "seed0/full/run.json"]
    assert sorted(str(p.relative_to(tmp_path / "kept")) for p in (tmp_path / "kept").rglob("*") if p.is_file()) \
        == sorted(map(str, written))
    touch(source / "seed0" / "full" / "metrics.json", '{"train": {"seconds": 2}}')  # trained again
    with pytest.raises(ValueError, match=r"seed0/full/metrics.json: not the run .* was timed with"):
        script("front_keep").keep(source, tmp_path / "kept2")


def test_a_source_with_no_timed_seed_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    touch(tmp_path / "runs" / "seed0" / "full" / "metrics.json")
    keep = script("front_keep")
    monkeypatch.setattr("sys.argv", ["front_keep.py", str(tmp_path / "runs"), str(tmp_path / "kept")])
    assert keep.main() == 2
    err = capsys.readouterr().err.strip()
    assert err == f"front_keep: error: {tmp_path / 'runs'}: no bench_rows.json under it (no seed was timed)"
    assert not (tmp_path / "kept").exists()


def test_kept_seeds_count_on_another_machine_whatever_code_timed_them(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.QUICK, "max_train", 32)
    monkeypatch.setitem(bench.QUICK, "max_test", 16)
    monkeypatch.chdir(tmp_path)  # relative --output, as on two machines with the same checkout
    first = bench.run_bench("", "tiny", bench.Path("here"), quick=True, seeds=(0, 1), rounds=1, progress=False,
                            methods=("distil",))
    assert {row["timed_by"] for row in first} == {bench.package_version()}
    script("front_keep").keep(tmp_path / "here" / "runs", tmp_path / "there" / "runs")

    def no_work(*args, **kwargs):
        raise AssertionError("a kept seed was trained or timed again")

    monkeypatch.setattr(bench, "train", no_work)
    monkeypatch.setattr(bench, "load_run", no_work)
    monkeypatch.setattr(bench, "package_version", lambda: "another-tree")
    # --points-only beside the next seed's training leaves the kept seeds alone (nothing to load).
    bench.run_bench("", "tiny", bench.Path("there"), quick=True, seeds=(0, 1), progress=False, methods=("distil",),
                    points_only=True)
    again = bench.run_bench("", "tiny", bench.Path("there"), quick=True, seeds=(0, 1), rounds=1, progress=False,
                            methods=("distil",))
    assert again == first
    assert json.loads((tmp_path / "there" / "front.json").read_text())["result"] == \
        json.loads((tmp_path / "here" / "front.json").read_text())["result"]
    with pytest.raises(ValueError, match=r"kept for other rounds than this bench's, and full has no weights"):
        bench.run_bench("", "tiny", bench.Path("there"), quick=True, seeds=(0, 1), rounds=2, progress=False,
                        methods=("distil",))
