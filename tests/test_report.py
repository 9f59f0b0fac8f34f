"""dht.report (``dht table``): run rows from metrics files; the seed summary against DHT's acceptance line."""

import json
from pathlib import Path

import pytest

from dht import report
from dht.cli import main


def write_run(path: Path, method: str, f1: float, inference: float, training: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = {"accuracy": f1, "f1_macro": f1, "flop_ratio": inference, "flop_ratio_all_in": inference, "seconds": 1.0}
    train = {"flop_ratio": training, "flop_ratio_all_in": training, "seconds": 2.0}
    path.write_text(json.dumps({"method": method, "test": block, "train": train}))


def row(table: str, name: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_seed_table_means_and_line(tmp_path):
    write_run(tmp_path / "full.json", "full", 0.90, 1.0, 1.0)
    write_run(tmp_path / "seeds" / "full-seed1.json", "full", 0.92, 1.0, 1.0)  # BL1 mean 0.91
    write_run(tmp_path / "t-dht.json", "dht", 0.90, 0.50, 0.60)
    write_run(tmp_path / "seeds" / "t-dht-seed1.json", "dht", 0.89, 0.52, 0.62)  # mean 0.895: 1.5 below
    write_run(tmp_path / "f-dht.json", "dht", 0.91, 0.50, 0.75)  # accurate, but trains at 0.75
    write_run(tmp_path / "s-dht.json", "dht", 0.89, 0.50, 0.60)  # 2 points below
    table = report.seed_table(tmp_path)
    assert row(table, "BL1 (full model)")[1:3] == ["2", "0.9100 (0.9000-0.9200)"]
    t = row(table, "DHT T-DHT")
    assert t[1:] == ["2", "0.8950 (0.8900-0.9000)", "1.50", "0.510, 0.520", "0.610, 0.620", "yes"]
    assert row(table, "DHT F-DHT")[-1] == "no"
    assert row(table, "DHT S-DHT")[3:] == ["2.00", "0.500, 0.500", "0.600, 0.600", "no"]


def test_seed_table_needs_bl1(tmp_path):
    write_run(tmp_path / "t-dht.json", "dht", 0.9, 0.5, 0.6)
    with pytest.raises(ValueError, match="no full.json"):
        report.seed_table(tmp_path)


def test_run_table_rows_in_registry_order_and_other_json_skipped(tmp_path, capsys):
    write_run(tmp_path / "t-dht.json", "dht", 0.88, 0.50, 0.60)
    write_run(tmp_path / "full.json", "full", 0.90, 1.0, 1.0)
    write_run(tmp_path / "distil-3.json", "distil", 0.89, 0.50, 0.83)
    (tmp_path / "inference_wall.json").write_text(json.dumps({"rows": []}))  # not a run's metrics
    (tmp_path / "results.json").write_text(json.dumps([{"method": "full"}]))
    assert main(["table", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["BL1 (full model)", "distil-3", "DHT T-DHT"]
    assert row("\n".join(lines), "DHT T-DHT")[1:5] == ["0.8800", "0.8800", "0.600 / 0.600", "0.500 / 0.500"]


def test_table_of_a_missing_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["table", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_a_folder_of_run_folders_is_a_table_named_by_folder(tmp_path, capsys):
    write_run(tmp_path / "mine" / "metrics.json", "dht", 0.88, 0.50, 0.60)
    write_run(tmp_path / "baseline" / "metrics.json", "full", 0.90, 1.0, 1.0)
    (tmp_path / "stopped").mkdir()  # a run folder without metrics.json: not finished, not a row
    assert main(["table", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["baseline (full)", "mine (dht)"]
    assert row("\n".join(lines), "mine (dht)")[1:3] == ["0.8800", "0.8800"]


def test_a_folder_without_runs_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "notes.json").write_text("{}")
    assert main(["table", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run metrics here" in err
