"""`dht bench`: every registered method on the same data, budget and seed, one FLOP counter and one clock.

Each method says which runs it contributes (``Method.bench_runs``): BL1 (full model), BL2 (students of
1, 3 and N_L/2 layers), BL3 (FastBERT at speeds 0.1, 0.5, 0.8), the four DHT presets and dynamic layer
tying (whose Table 1 columns of trainable parameters and peak memory are what it saves). They train into
OUTPUT/runs/FOLDER in registry order, BL1 first (a finished run is not redone; an interrupted one is
resumed); a method with a ``teacher`` option gets the bench's BL1 run. Then every run's inference is
timed in one process, round-robin, and the paper's Table 1 (training) and Table 2 (inference) are
written as markdown, with ``results.json`` (through ``dht.provenance``) and ``pareto.png``. FastBERT's
speed only decides where inference exits, so its branches are trained once and the three speeds are
three evaluations of that one run (as FastBERT itself is used).
"""

from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import dht.methods  # noqa: F401  (registers the built-in methods)
from dht.provenance import write_result
from dht.training.config import RunConfig, TrainConfig
from dht.training.hooks import METHODS, BenchRun
from dht.training.loop import evaluate, load_run, train
from dht.training.setup import Prepared, resolve_device

QUICK = {"max_train": 1000, "max_test": 500, "epochs": 1}  # --quick: minutes on a laptop CPU
TEACHER = "full"  # the bench run that methods with a ``teacher`` option start from


def entries(num_layers: int, teacher: Path) -> list[BenchRun]:
    """Every registered method's bench runs, in registry order, BL1's first (it is the others' teacher)."""
    runs = []
    for name, method in sorted(METHODS.items(), key=lambda item: item[0] != TEACHER):
        takes_teacher = any(field.name == "teacher" for field in method.Options.fields())
        for bench in method.bench_runs(num_layers):
            options = {"teacher": str(teacher), **bench.options} if takes_teacher else bench.options
            runs.append(replace(bench, method=name, options=options))
    return runs


def train_all(base: RunConfig, output: Path, num_layers: int, progress: bool,
              device: str | None = None) -> list[BenchRun]:
    """Train every entry that has no metrics.json yet (resuming those with a checkpoint)."""
    runs = entries(num_layers, output / "runs" / TEACHER)
    for i, entry in enumerate(runs, 1):
        folder = output / "runs" / entry.run
        if (folder / "metrics.json").is_file():
            print(f"[{i}/{len(runs)}] {entry.name}: trained already ({folder})")
            continue
        print(f"[{i}/{len(runs)}] {entry.name}: training {folder}")
        resume = (folder / "checkpoint" / "state.json").is_file()
        train(replace(base, method=entry.method, options=entry.options), folder, resume=resume, progress=progress,
              device=device)
    return runs


def time_inference(prepared: list[Prepared], rounds: int) -> tuple[list[dict[str, Any]], list[float]]:
    """Evaluate each run ``rounds`` times, round-robin; return the last results and median seconds."""
    seconds: list[list[float]] = [[] for _ in prepared]
    results: list[dict[str, Any]] = [{} for _ in prepared]
    for _ in range(rounds):
        for i, p in enumerate(prepared):
            results[i] = evaluate(p)
            seconds[i].append(results[i]["seconds"])
    return results, [statistics.median(s) for s in seconds]


def result_rows(output: Path, runs: list[BenchRun], rounds: int, device: str | None = None) -> list[dict[str, Any]]:
    """One row per run: training figures from its metrics.json, inference timed here, on one clock."""
    prepared = [load_run(output / "runs" / entry.run, overrides=entry.overrides, device=device) for entry in runs]
    tests, seconds = time_inference(prepared, rounds)
    rows = []
    for entry, test, wall in zip(runs, tests, seconds):
        trained = json.loads((output / "runs" / entry.run / "metrics.json").read_text(encoding="utf-8"))["train"]
        config = {k: v for k, v in entry.options.items() if k != "teacher"}
        rows.append({"method": entry.method, "config": entry.name, "options": config,
                     "f1_macro": test["f1_macro"], "accuracy": test["accuracy"],
                     "train_flop_ratio": trained["flop_ratio"], "train_flop_ratio_all_in": trained["flop_ratio_all_in"],
                     "test_flop_ratio": test["flop_ratio"], "test_flop_ratio_all_in": test["flop_ratio_all_in"],
                     "test_wall_ratio": wall / seconds[0], "train_seconds": trained["seconds"], "test_seconds": wall,
                     "train_device": trained.get("device", "not recorded"), "test_device": test["device"],
                     "trainable_params": trained.get("trainable_params"),
                     "train_peak_rss_growth_mb": trained.get("memory", {}).get("rss_peak_growth_mb")})
    bl1 = rows[0]["trainable_params"]
    for row in rows:  # what tying (DLT) or freezing (FastBERT) leaves to train, against BL1
        row["trainable_params_ratio"] = row["trainable_params"] / bl1 if row["trainable_params"] and bl1 else None
    return rows


def tables(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """Table 1 (training) and Table 2 (inference) in markdown."""
    one = ["| run | macro-F1 | train FLOP ratio | train FLOP ratio (all-in) | trainable params vs BL1 "
           "| peak RSS growth MB | train seconds |", "|---|---|---|---|---|---|---|"]
    two = ["| run | macro-F1 | accuracy | inference FLOP ratio | inference FLOP ratio (all-in) "
           "| wall-time ratio vs BL1 |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        trainable = "" if r.get("trainable_params_ratio") is None else f"{r['trainable_params_ratio']:.3f}"
        rss = "" if r.get("train_peak_rss_growth_mb") is None else f"{r['train_peak_rss_growth_mb']:.0f}"
        one.append(f"| {r['config']} | {r['f1_macro']:.4f} | {r['train_flop_ratio']:.3f} "
                   f"| {r['train_flop_ratio_all_in']:.3f} | {trainable} | {rss} | {r['train_seconds']:.0f} |")
        two.append(f"| {r['config']} | {r['f1_macro']:.4f} | {r['accuracy']:.4f} | {r['test_flop_ratio']:.3f} "
                   f"| {r['test_flop_ratio_all_in']:.3f} | {r['test_wall_ratio']:.3f} |")
    return "\n".join(one) + "\n", "\n".join(two) + "\n"


def plot_pareto(rows: list[dict[str, Any]], out: Path) -> None:
    """Macro-F1 against inference FLOP ratio (all-in), one marker per registered method, BL1 a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = iter("soD^vP<>Xph")  # one marker per method, BL1 a star
    fig, ax = plt.subplots(figsize=(7, 5))
    for method in METHODS:
        chosen = [r for r in rows if r["method"] == method]
        if chosen:
            marker = "*" if method == TEACHER else next(shapes)
            ax.scatter([r["test_flop_ratio_all_in"] for r in chosen], [r["f1_macro"] for r in chosen],
                       marker=marker, s=160 if method == TEACHER else 60, label=method)
            for r in chosen:
                ax.annotate(r["config"], (r["test_flop_ratio_all_in"], r["f1_macro"]), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("inference FLOP ratio vs BL1 (all-in)")
    ax.set_ylabel("test macro-F1")
    ax.set_title("Accuracy against inference cost")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def run_bench(data: str, backbone: str, output: Path, quick: bool, seed: int = 0, rounds: int = 2,
              progress: bool = True, device: str | None = None, lr: float | None = None) -> list[dict[str, Any]]:
    """Train what is missing, time inference, write the tables, results.json and the plots."""
    from dht.model import resolve_backbone

    train_config = TrainConfig(seed=seed, **(QUICK if quick else {}), **({"lr": lr} if lr is not None else {}))
    base = RunConfig(data=data, backbone=backbone, train=train_config)
    num_layers = resolve_backbone(backbone).config.num_layers
    runs = train_all(base, output, num_layers, progress, device)
    print("timing inference of every run, round-robin")
    rows = result_rows(output, runs, rounds, device)
    table1, table2 = tables(rows)
    (output / "table1.md").write_text(table1, encoding="utf-8")
    (output / "table2.md").write_text(table2, encoding="utf-8")
    write_result(output / "results.json", rows, resolve_device(device))
    plot_pareto(rows, output / "pareto.png")
    for entry in runs:
        if (output / "runs" / entry.run / "selection.png").is_file():  # what a dynamic method's runs chose
            shutil.copy(output / "runs" / entry.run / "selection.png", output / f"selection-{entry.name}.png")
    return rows
