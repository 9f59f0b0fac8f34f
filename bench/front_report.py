"""Markdown tables of the accuracy-for-cost front from committed JSON (bench/front_sweep.py, budget_curve.py).

Usage: python bench/front_report.py sweep FILE [FILE ...] [--fastbert FILE]  # means over seeds, against FastBERT
       python bench/front_report.py budget FILE              # one run's budget curve and oracles
       python bench/front_report.py wall FILE [FILE ...]     # bench/train_wall.py: seconds against FLOPs
       python bench/front_report.py heads FILE [FILE ...]    # dht evaluate --head-sets: F1 of the two ways
       python bench/front_report.py inference FILE           # bench/inference_wall.py: seconds against FLOPs

For a sweep, each DHT row is compared with FastBERT's speed curve (its mean over seeds, interpolated
linearly in inference FLOPs, all-in): "above" when the row's mean macro-F1 is higher at the same cost. A
paired column counts the seeds whose DHT run is above FastBERT's run of the same seed: a mean above the
curve that one seed carries is within the seeds' spread, not a win.
``--fastbert FILE`` takes FastBERT's rows from that file only (e.g. a three-seed ``front_sweep.py --preset
none``), leaving out those the other files carry.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from statistics import mean


def load(path: Path) -> tuple[dict, object]:
    document = json.loads(path.read_text(encoding="utf-8"))
    return document["provenance"], document["result"]


def fastbert_curve(rows: list[dict]) -> list[tuple[float, float]]:
    """FastBERT's (inference FLOPs all-in, macro-F1) means over seeds per speed, sorted by FLOPs."""
    by_speed = defaultdict(list)
    for r in rows:
        if r["method"] == "fastbert" and r.get("kind", "knob") == "knob":  # not the bench's oracle rows
            by_speed[r["value"]].append(r)
    return sorted((mean(r["test_flop_ratio_all_in"] for r in rs), mean(r["f1_macro"] for r in rs))
                  for rs in by_speed.values())


def interpolate(curve: list[tuple[float, float]], x: float) -> float | None:
    """The curve's F1 at FLOPs x (linear between points); None outside its range."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def row_label(knob: str | None, value: float | None, kind: str) -> str:
    """A sweep row's knob column: the oracle's name, the knob and its value, or nothing (a row without a knob)."""
    if kind != "knob":
        return kind
    if knob is None:
        return ""
    return knob if value is None else f"{knob} {value:g}"


def sweep_table(paths: list[Path], fastbert: Path | None = None) -> str:
    rows = [r for path in paths for r in load(path)[1]]
    if fastbert is not None:
        rows = [r for r in rows if r["method"] != "fastbert"] + [r for r in load(fastbert)[1]
                                                                 if r["method"] == "fastbert"]
    curve = fastbert_curve(rows)
    per_seed = {seed: fastbert_curve([r for r in rows if r["seed"] == seed]) for seed in {r["seed"] for r in rows}}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:  # the bench's curves.json also holds oracle rows (``kind``), one each per run and seed
        groups[(r["config"], r["knob"], r["value"], r.get("kind", "knob"))].append(r)
    lines = ["| run | knob | seeds | macro-F1 mean (min-max) | inference FLOPs all-in | training FLOPs all-in "
             "(per token) | FastBERT's curve there | above it | seeds above their own seed's curve |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (config, knob, value, kind), rs in groups.items():
        seeds = sorted({r["seed"] for r in rs})
        f1 = [r["f1_macro"] for r in rs]
        flops = mean(r["test_flop_ratio_all_in"] for r in rs)
        label = row_label(knob, value, kind)
        reference = interpolate(curve, flops) if rs[0]["method"] == "dht" else None
        verdict = "" if reference is None else "yes" if mean(f1) > reference else "no"
        paired = [(r["f1_macro"], interpolate(per_seed[r["seed"]], r["test_flop_ratio_all_in"]))
                  for r in {r["seed"]: r for r in rs}.values()] if rs[0]["method"] == "dht" else []
        outside = sum(there is None for _, there in paired)  # no FastBERT run of its seed at that cost
        paired = [(f, there) for f, there in paired if there is not None]
        count = f"{sum(f > there for f, there in paired)} of {len(paired)}" if paired else ""
        count += f" ({outside} outside its seed's curve)" if outside else ""
        lines.append(f"| {config} | {label} | {len(seeds)} | {mean(f1):.4f} ({min(f1):.4f}-{max(f1):.4f}) "
                     f"| {flops:.3f} | {mean(r['train_flop_ratio_all_in'] for r in rs):.3f} "
                     f"| {'' if reference is None else f'{reference:.4f}'} | {verdict} | {count} |")
    return "\n".join(lines)


def budget_table(path: Path) -> str:
    _, result = load(path)
    rows = "held-out rows" if any(r.get("rows") == "holdout" for r in result["budgets"]) else "training rows"
    lines = [f"Run: {result['run']} (method {result['method']}, seed {result['seed']})", "",
             f"| target R | knob value | {rows}' ratio | reachable on {rows} | test FLOPs all-in "
             "| within ±0.02 | macro-F1 |", "|---|---|---|---|---|---|---|"]
    for r in result["budgets"]:
        low, high = r["reachable_on_train"]
        lines.append(f"| {r['target']} | {r['option']} {r['value']:.4g} | {r['train_flop_ratio_all_in']:.3f} "
                     f"| {low:.3f}-{high:.3f} | {r['test_flop_ratio_all_in']:.3f} "
                     f"| {'yes' if r['landed_within_0.02'] else 'no'} | {r['f1_macro']:.4f} |")
    if "oracle" in result:
        oracle = result["oracle"]
        lines += ["", "| route or oracle | macro-F1 | accuracy | inference FLOPs (network) |", "|---|---|---|---|"]
        for name, r in oracle["routes"].items():
            lines.append(f"| every sample on {name} | {r['f1_macro']:.4f} | {r['accuracy']:.4f} "
                         f"| {r['flop_ratio']:.3f} |")
        for name in ("oracle_correct", "oracle_agrees_with_full"):
            r = oracle[name]
            lines.append(f"| {name} | {r['f1_macro']:.4f} | {r['accuracy']:.4f} | {r['flop_ratio']:.3f} |")
    return "\n".join(lines)


def wall_table(paths: list[Path]) -> str:
    """bench/train_wall.py results: per run, the training wall-time ratio beside the all-in FLOP ratio."""
    lines = ["| run | against | samples timed (run, BL1) | wall-time ratio per sample | all-in FLOP ratio per sample "
             "| gap |", "|---|---|---|---|---|---|"]
    for path in paths:
        _, r = load(path)
        samples = f"{r['run_side']['samples']}, {r['reference_side']['samples']}"
        lines.append(f"| {r['run']} | {r['reference']} | {samples} | {r['wall_ratio_per_sample']:.3f} "
                     f"| {r['flop_ratio_all_in_per_sample']:.3f} | {r['gap']:+.3f} |")
    return "\n".join(lines)


def head_sets_table(paths: list[Path]) -> str:
    """``dht evaluate RUN --head-sets per-sample|per-batch --output FILE`` results: per run, macro-F1 with each
    sample's own heads and with one set per queued batch, and the share of samples that kept fewer than all
    heads somewhere (routes such as 4L8H; n/a where routes name no heads, as T-DHT's)."""
    runs: dict[str, dict[str, dict]] = defaultdict(dict)
    for path in paths:
        document = json.loads(path.read_text(encoding="utf-8"))
        runs[document["run"]][document["options"]["head_sets"]] = document["test"]
    lines = ["| run | macro-F1, per-sample heads | macro-F1, per-batch heads | difference | FLOPs all-in (both) "
             "| samples on fewer heads |", "|---|---|---|---|---|---|"]
    for run, tests in runs.items():
        own, shared = tests["per-sample"], tests["per-batch"]
        heads = {label: route_heads(label) for label in own["routes"]}
        most = max((n for n in heads.values() if n is not None), default=None)
        share = sum(r["share"] for label, r in own["routes"].items() if most is not None and heads[label] < most)
        fewer = "n/a" if most is None else f"{share:.2f}"
        lines.append(f"| {run} | {own['f1_macro']:.4f} | {shared['f1_macro']:.4f} "
                     f"| {shared['f1_macro'] - own['f1_macro']:+.4f} | {own['flop_ratio_all_in']:.3f} "
                     f"({shared['flop_ratio_all_in']:.3f}) | {fewer} |")
    return "\n".join(lines)


def route_heads(label: str) -> int | None:
    """The fewest heads a route's layers keep ("4L8H" -> 8, "2L12H>4L8H" -> 8); None if it names none ("4L")."""
    counts = [int(n) for n in re.findall(r"(\d+)H", label)]
    return min(counts) if counts else None


def inference_wall_table(path: Path) -> str:
    """bench/inference_wall.py results: per run and inference options, the wall-time ratio to the reference
    beside the all-in inference FLOP ratio."""
    _, r = load(path)
    lines = ["| run | inference options | macro-F1 | inference FLOPs all-in | wall-time ratio | gap |",
             "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        options = ", ".join(f"{k}={v}" for k, v in row.get("inference_options", {}).items()) or "as trained"
        lines.append(f"| {row['run']} | {options} | {row['f1_macro']:.4f} | {row['flop_ratio_all_in']:.3f} "
                     f"| {row['wall_ratio']:.3f} | {row['wall_ratio'] - row['flop_ratio_all_in']:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("sweep", "budget", "wall", "heads", "inference"))
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--fastbert", type=Path, default=None, help="sweep: FastBERT's rows from this file only")
    args = parser.parse_args()
    tables = {"sweep": lambda: sweep_table(args.files, args.fastbert), "budget": lambda: budget_table(args.files[0]),
              "wall": lambda: wall_table(args.files), "heads": lambda: head_sets_table(args.files),
              "inference": lambda: inference_wall_table(args.files[0])}
    print(tables[args.kind]())


if __name__ == "__main__":
    main()
