"""Render committed runs (the metrics.json files in a folder such as bench/results/DATASET) as markdown tables.

Usage: python bench/results_table.py [bench/results/ag_news] > table.md
       python bench/results_table.py bench/results/ag_news --seeds   # mean and range over seeds, against BL1
Files are named after the run: full.json, f-dht.json (seed 0), seeds/f-dht-seed1.json, ...; other JSON files
are skipped. ``--seeds`` groups each method's seed-0 file with those in ``seeds/`` and compares the means with
DHT's acceptance line (macro-F1 >= BL1's mean - 1.5 points at inference <= 0.60 and training <= 0.70 all-in).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

ORDER = ["full", "s-dht", "f-dht", "t-dht", "p-dht"]
F1_POINTS, MAX_INFERENCE, MAX_TRAINING = 1.5, 0.60, 0.70  # the DHT issue's acceptance line


def run_name(path: Path) -> tuple[str, str]:
    """'f-dht-seed1.json' -> ('f-dht', '1'); 'full.json' -> ('full', '')."""
    base, _, seed = path.stem.partition("-seed")
    return base, seed


def method_name(base: str, metrics: dict) -> str:
    """'BL1 (full model)', 'DHT F-DHT', ... from the file's base name."""
    return "BL1 (full model)" if base == "full" else f"DHT {base.upper()}" if metrics["method"] == "dht" else base


def all_in(block: dict) -> float:
    return block.get("flop_ratio_all_in", block["flop_ratio"])


def runs_in(folder: Path) -> list[tuple[Path, dict]]:
    """The folder's runs in table order, each with its metrics."""
    runs = [p for p in folder.glob("*.json") if run_name(p)[0] in ORDER]
    files = sorted(runs, key=lambda p: (ORDER.index(run_name(p)[0]), p.stem))
    return [(path, json.loads(path.read_text())) for path in files]


def run_table(folder: Path) -> str:
    lines = ["| method | accuracy | macro-F1 | train FLOP ratio (paper / all-in) | test FLOP ratio (paper / all-in) "
             "| train s | test s |", "|---|---|---|---|---|---|---|"]
    for path, m in runs_in(folder):
        base, seed = run_name(path)
        tr, te = m["train"], m["test"]
        lines.append(f"| {method_name(base, m)}{f' seed {seed}' if seed else ''} | {te['accuracy']:.4f} "
                     f"| {te['f1_macro']:.4f} | {tr['flop_ratio']:.3f} / {all_in(tr):.3f} "
                     f"| {te['flop_ratio']:.3f} / {all_in(te):.3f} | {tr['seconds']:.0f} | {te['seconds']:.0f} |")
    return "\n".join(lines)


def seed_table(folder: Path) -> str:
    """Per method, over its seeds: macro-F1 mean (range), the gap to BL1's mean, the FLOP ratios' means and
    whether the means meet the acceptance line."""
    groups: dict[str, list[dict]] = {}
    for path, m in runs_in(folder) + runs_in(folder / "seeds"):
        groups.setdefault(run_name(path)[0], []).append(m)
    if "full" not in groups:
        raise SystemExit(f"results_table: no full.json (BL1) in {folder}")
    reference = mean(m["test"]["f1_macro"] for m in groups["full"])
    lines = ["| method | seeds | macro-F1 mean (min-max) | points below BL1's mean | inference FLOPs all-in "
             "(mean, max) | training FLOPs all-in (mean, max) | line met by the means |",
             "|---|---|---|---|---|---|---|"]
    for base in ORDER:
        if base not in groups:
            continue
        runs = groups[base]
        f1 = [m["test"]["f1_macro"] for m in runs]
        inference = [all_in(m["test"]) for m in runs]
        training = [all_in(m["train"]) for m in runs]
        gap = 100 * (reference - mean(f1))
        # 1e-9: a mean exactly on the line must not fail by float rounding
        met = gap <= F1_POINTS + 1e-9 and mean(inference) <= MAX_INFERENCE and mean(training) <= MAX_TRAINING
        lines.append(f"| {method_name(base, runs[0])} | {len(runs)} | {mean(f1):.4f} ({min(f1):.4f}-{max(f1):.4f}) "
                     f"| {gap:.2f} | {mean(inference):.3f}, {max(inference):.3f} "
                     f"| {mean(training):.3f}, {max(training):.3f} | {'' if base == 'full' else 'yes' if met else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", default=Path("bench/results/ag_news"))
    parser.add_argument("--seeds", action="store_true", help="mean and range over seeds (files in seeds/)")
    args = parser.parse_args()
    print(seed_table(args.folder) if args.seeds else run_table(args.folder))


if __name__ == "__main__":
    main()
