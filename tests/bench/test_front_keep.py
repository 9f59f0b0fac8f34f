"""bench/front_keep.py: a bench's timed seeds copied without their weights, and nothing else."""

from test_train_wall import script


def touch(path, text="{}"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_only_timed_seeds_small_files_are_copied_with_their_layout(tmp_path):
    source = tmp_path / "runs"
    for name in ("seed0/bench_rows.json", "seed0/full/run.json", "seed0/full/metrics.json",
                 "seed0/full/model.safetensors", "seed0/full/tokenizer.json", "seed0/full/log.jsonl",
                 "seed0/full/checkpoint/metrics.json", "seed0/f-dht/selection.png",
                 "seed1/full/run.json", "seed1/full/metrics.json"):  # seed 1: trained, not timed
        touch(source / name)
    written = script("front_keep").keep(source, tmp_path / "kept")
    assert sorted(map(str, written)) == ["seed0/bench_rows.json", "seed0/f-dht/selection.png",
                                         "seed0/full/metrics.json", "seed0/full/run.json"]
    assert sorted(str(p.relative_to(tmp_path / "kept")) for p in (tmp_path / "kept").rglob("*") if p.is_file()) \
        == sorted(map(str, written))


def test_a_source_with_no_timed_seed_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    touch(tmp_path / "runs" / "seed0" / "full" / "metrics.json")
    keep = script("front_keep")
    monkeypatch.setattr("sys.argv", ["front_keep.py", str(tmp_path / "runs"), str(tmp_path / "kept")])
    assert keep.main() == 2
    err = capsys.readouterr().err.strip()
    assert err == f"front_keep: error: {tmp_path / 'runs'}: no bench_rows.json under it (no seed was timed)"
    assert not (tmp_path / "kept").exists()
