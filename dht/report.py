"""Results tables from committed runs: the metrics.json files in a folder such as bench/results/DATASET.

``dht table FOLDER`` prints one row per run; ``dht table FOLDER --seeds`` groups each run with its other
seeds and compares the means with DHT's acceptance line (macro-F1 >= BL1's mean - 1.5 points at
inference <= 0.60 and training <= 0.70 of BL1's FLOPs, all-in). A file is a run's metrics when it holds a
``method``, ``test`` and ``train`` block; it is named after the run: full.json, f-dht.json (seed 0),
seeds/f-dht-seed1.json, ... Other JSON files are skipped. A folder of run folders (``runs/``: each with its
``metrics.json``) is read too, each row named after its folder and method. Rows follow the method registry's
order (BL1 first), then each method's bench runs (``table_order``); each method names its own rows
(``Method.row_title``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from statistics import mean

import dht.methods  # noqa: F401  (registers the built-in methods, whose rows the tables name)
from dht.training.hooks import METHODS, method_type

F1_POINTS, MAX_INFERENCE, MAX_TRAINING = 1.5, 0.60, 0.70  # the DHT issue's acceptance line
REFERENCE = "full"  # BL1: the run every other is compared with


def run_name(path: Path) -> tuple[str, str]:
    """'f-dht-seed1.json' -> ('f-dht', '1'); 'full.json' -> ('full', '')."""
    base, _, seed = path.stem.partition("-seed")
    return base, seed


def all_in(block: dict) -> float:
    return block.get("flop_ratio_all_in", block["flop_ratio"])


def read_runs(folder: Path) -> list[tuple[str, str, dict, str]]:
    """The folder's runs as (name, seed, metrics, row title), in table order: its NAME.json files (titled
    by their method, ``Method.row_title``) and its run folders' metrics.json (titled by the folder's name and
    the method); files that are not a known method's metrics are skipped."""
    runs = []
    for path in [*folder.glob("*.json"), *folder.glob("*/metrics.json")]:
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:  # json's errors are ValueErrors
            raise ValueError(f"{path}: not JSON ({error})") from None
        if isinstance(metrics, dict) and {"method", "test", "train"} <= set(metrics) and metrics["method"] in METHODS:
            if path.name == "metrics.json":
                runs.append((path.parent.name, "", metrics, f"{path.parent.name} ({metrics['method']})"))
            else:
                name, seed = run_name(path)
                runs.append((name, seed, metrics, method_type(metrics["method"]).row_title(name)))
    return sorted(runs, key=lambda run: table_order(run[2]["method"], run[0]) + (run[1],))


def table_order(method: str, name: str) -> tuple:
    """Where a run's row goes: its method's place in the registry, then the run's place among the method's
    bench runs (asked of a 12-layer backbone, the paper's), then its name with numbers compared as numbers."""
    names = [bench.name for bench in METHODS[method].bench_runs(12)]
    natural = tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))
    return list(METHODS).index(method), names.index(name) if name in names else len(names), natural


def run_table(folder: Path) -> str:
    """One row per run: accuracy, macro-F1, FLOP ratios (paper-style / all-in) and seconds."""
    lines = ["| method | accuracy | macro-F1 | train FLOP ratio (paper / all-in) | test FLOP ratio (paper / all-in) "
             "| train s | test s |", "|---|---|---|---|---|---|---|"]
    for _, seed, m, title in read_runs(folder):
        tr, te = m["train"], m["test"]
        lines.append(f"| {title}{f' seed {seed}' if seed else ''} | {te['accuracy']:.4f} "
                     f"| {te['f1_macro']:.4f} | {tr['flop_ratio']:.3f} / {all_in(tr):.3f} "
                     f"| {te['flop_ratio']:.3f} / {all_in(te):.3f} | {tr['seconds']:.0f} | {te['seconds']:.0f} |")
    return "\n".join(lines)


def seed_table(folder: Path) -> str:
    """Per run, over its seeds (the folder's file and those in seeds/): macro-F1 mean (range), the gap to
    BL1's mean, the FLOP ratios' means and whether the means meet the acceptance line.

    Raises ValueError when the folder has no BL1 run (full.json)."""
    groups: dict[str, list[dict]] = {}
    titles: dict[str, str] = {}
    for name, _, m, title in read_runs(folder) + read_runs(folder / "seeds"):
        groups.setdefault(name, []).append(m)
        titles.setdefault(name, title)
    if REFERENCE not in groups:
        raise ValueError(f"{folder}: no {REFERENCE}.json (BL1) to compare with")
    reference = mean(m["test"]["f1_macro"] for m in groups[REFERENCE])
    lines = ["| method | seeds | macro-F1 mean (min-max) | points below BL1's mean | inference FLOPs all-in "
             "(mean, max) | training FLOPs all-in (mean, max) | line met by the means |",
             "|---|---|---|---|---|---|---|"]
    for name, runs in groups.items():
        f1 = [m["test"]["f1_macro"] for m in runs]
        inference = [all_in(m["test"]) for m in runs]
        training = [all_in(m["train"]) for m in runs]
        gap = 100 * (reference - mean(f1))
        # 1e-9: a mean exactly on the line must not fail by float rounding
        met = gap <= F1_POINTS + 1e-9 and mean(inference) <= MAX_INFERENCE and mean(training) <= MAX_TRAINING
        verdict = "" if name == REFERENCE else "yes" if met else "no"
        lines.append(f"| {titles[name]} | {len(runs)} | {mean(f1):.4f} ({min(f1):.4f}-{max(f1):.4f}) "
                     f"| {gap:.2f} | {mean(inference):.3f}, {max(inference):.3f} "
                     f"| {mean(training):.3f}, {max(training):.3f} | {verdict} |")
    return "\n".join(lines)


def results_table(folder: Path, seeds: bool = False) -> str:
    """``dht table``: the run table of ``folder``, or with ``seeds`` the summary over seeds.

    Raises ValueError when the folder does not exist."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    if not read_runs(folder):
        raise ValueError(f"{folder}: no run metrics here (NAME.json files as in bench/results/ag_news, or run "
                         "folders with their metrics.json)")
    return seed_table(folder) if seeds else run_table(folder)
