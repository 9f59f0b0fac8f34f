"""One run per run folder: a second run on a folder in use stops with one line; a failed start leaves
nothing behind."""

import os

import pytest

from dht.cli import main
from dht.training.lock import RunInUseError, run_lock

TINY = ["--backbone", "tiny", "--max-train", "32", "--max-test", "16", "--epochs", "1", "--batch-size", "16",
        "--quiet"]


def test_a_second_run_on_a_folder_in_use_stops_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "run"
    with run_lock(run):
        assert main(["train", *TINY, "--output", str(run)]) == 2
        err = capsys.readouterr().err
        assert f"is in use by process {os.getpid()}" in err and err.count("\n") == 1
        with pytest.raises(RunInUseError):
            with run_lock(run):
                pass
    assert not (run / "run.json").exists()  # the refused run wrote nothing
    assert main(["train", *TINY, "--output", str(run)]) == 0  # released: the folder can be used
    with run_lock(run):  # and released again when the run ends
        pass


def test_a_run_refused_before_writing_leaves_no_folders(tmp_path, capsys):
    output = tmp_path / "new" / "deeper" / "run"
    assert main(["train", "--method", "distil", *TINY, "--output", str(output)]) == 2
    assert "--teacher is required" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the run folder nor the parents made for it


def test_an_existing_folder_keeps_what_it_holds(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("kept")
    with pytest.raises(ValueError):
        with run_lock(folder):
            raise ValueError("a bad option")
    assert (folder / "notes.txt").read_text() == "kept"
