"""Dynamic layer tying's acceptance table (layer_tying.md §9) from finished run folders.

Copies each run's metrics.json to ``--output``/NAME.json (and the first DLT run's tying.png), then writes
``summary.json`` (a list of objects: run, seed, f1_macro, trainable_params_final_ratio,
memory_analytic_peak_ratio, memory_measured_peak_ratio, train_flop_ratio_all_in, independent_layers_final,
and more) and ``table.md``, both against the BL1 run given with ``--bl1``. The measured memory is each
run's peak resident-set growth over its loaded model (``metrics.json`` → ``train.memory``) divided by
BL1's; runs made in separate processes, one at a time.

Usage: python bench/dlt_report.py --bl1 runs/bl1 NAME=runs/dlt-s0 [NAME=RUN ...]
       [--output bench/results/ag_news/dlt]
       python bench/dlt_report.py --table [FOLDER]   (print a written folder's table)
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from dht.provenance import repo_path, write_result
from dht.training.config import run_file

COLUMNS = ("| run | seed | macro-F1 | accuracy | trainable params mean / final (ratio to BL1) "
           "| independent layers | memory analytic peak / mean / final (ratio) | ties / unties "
           "| peak RSS growth MB (ratio) | train FLOP ratio (paper / all-in) | inference FLOP ratio | train s "
           "| test s |")


def transitions(folder: Path) -> tuple[int, int] | tuple[None, None]:
    """(ties, unties) that changed the state, counted from the run's tying.jsonl (not the actions: staying
    independent or re-tying to the same root changes nothing)."""
    path = folder / "tying.jsonl"
    if not path.is_file():
        return None, None
    ties = unties = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        layer, before, after = record["layer"], record["state_before"], record["state_after"]
        if before[layer] != after[layer]:
            ties, unties = (ties + 1, unties) if after[layer] != layer else (ties, unties + 1)
    return ties, unties


def summary_row(name: str, metrics: dict[str, Any], bl1: dict[str, Any]) -> dict[str, Any]:
    train, test = metrics["train"], metrics["test"]
    dlt = metrics.get("dlt", {})
    bl1_trainable = bl1["train"]["trainable_params"]
    trainable_final = dlt.get("trainable_params_final", train["trainable_params"])
    growth, bl1_growth = train["memory"]["rss_peak_growth_mb"], bl1["train"]["memory"]["rss_peak_growth_mb"]
    if not bl1_growth:
        raise ValueError("the BL1 run records no memory growth to compare with")
    return {"run": name, "method": metrics["method"], "options": metrics["options"],
            "seed": metrics.get("seed"), "f1_macro": test["f1_macro"], "accuracy": test["accuracy"],
            "trainable_params_mean": dlt.get("trainable_params_mean", trainable_final),
            "trainable_params_final": trainable_final, "trainable_params_final_ratio": trainable_final / bl1_trainable,
            "independent_layers_final": dlt.get("independent_layers_final", metrics.get("num_layers")),
            "memory_analytic_peak_ratio": dlt.get("memory_analytic_peak_ratio", 1.0),
            "memory_analytic_final_ratio": dlt.get("memory_analytic_final_ratio", 1.0),
            "memory_measured_peak_mb": growth, "memory_measured_peak_ratio": growth / bl1_growth,
            "train_flop_ratio": train["flop_ratio"], "train_flop_ratio_all_in": train["flop_ratio_all_in"],
            "inference_flop_ratio": test["flop_ratio"], "train_seconds": train["seconds"],
            "test_seconds": test["seconds"], "ties": metrics.get("ties"), "unties": metrics.get("unties"),
            "memory_analytic_mean_ratio": dlt.get("memory_analytic_mean_ratio", 1.0),
            "state_final": dlt.get("state_final")}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [COLUMNS, "|" + "---|" * (COLUMNS.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['seed']} | {r['f1_macro']:.4f} | {r['accuracy']:.4f} "
            f"| {r['trainable_params_mean'] / 1e6:.2f}M / {r['trainable_params_final'] / 1e6:.2f}M "
            f"({r['trainable_params_final_ratio']:.3f}) | {r['independent_layers_final'] or ''} "
            f"| {r['memory_analytic_peak_ratio']:.3f} / {r['memory_analytic_mean_ratio']:.3f} / "
            f"{r['memory_analytic_final_ratio']:.3f} | {r['ties'] if r['ties'] is not None else ''} / "
            f"{r['unties'] if r['unties'] is not None else ''} "
            f"| {r['memory_measured_peak_mb']:.0f} ({r['memory_measured_peak_ratio']:.3f}) "
            f"| {r['train_flop_ratio']:.3f} / {r['train_flop_ratio_all_in']:.3f} | {r['inference_flop_ratio']:.3f} "
            f"| {r['train_seconds']:.0f} | {r['test_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="NAME=RUN_FOLDER, the table's rows in order")
    parser.add_argument("--bl1", type=Path, help="the BL1 run folder (the reference row)")
    parser.add_argument("--output", type=Path, default=repo_path("bench/results/ag_news/dlt"))
    parser.add_argument("--table", type=Path, nargs="?", const=repo_path("bench/results/ag_news/dlt"))
    args = parser.parse_args()
    if args.table:
        print(table(json.loads((args.table / "summary.json").read_text(encoding="utf-8"))["result"]))
        return
    if args.bl1 is None or not args.runs:
        parser.error("give --bl1 RUN and NAME=RUN pairs")
    args.output.mkdir(parents=True, exist_ok=True)
    bl1 = json.loads((args.bl1 / "metrics.json").read_text(encoding="utf-8"))
    named = [("bl1", args.bl1)] + [(pair.split("=", 1)[0], Path(pair.split("=", 1)[1])) for pair in args.runs]
    rows, plotted = [], False
    for name, folder in named:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        settings = json.loads(run_file(folder).read_text(encoding="utf-8"))
        metrics["seed"] = settings["run"]["train"]["seed"]
        metrics["ties"], metrics["unties"] = transitions(folder)
        metrics["num_layers"] = settings["encoder"]["num_layers"]
        (args.output / f"{name}.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
        if not plotted and (folder / "tying.png").is_file():
            shutil.copy(folder / "tying.png", args.output / "tying.png")
            shutil.copy(folder / "tying.jsonl", args.output / f"tying-{name}.jsonl")
            plotted = True
        rows.append(summary_row(name, metrics, bl1))
    write_result(args.output / "summary.json", rows)
    (args.output / "table.md").write_text(table(rows), encoding="utf-8")
    print(table(rows))


if __name__ == "__main__":
    main()
