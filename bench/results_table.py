"""Render committed runs (the metrics.json files in a folder such as bench/results/DATASET) as a markdown table.

Usage: python bench/results_table.py [bench/results/ag_news] > table.md
Files are named after the run: full.json, f-dht.json, f-dht-seed1.json, ...; other JSON files are skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["full", "s-dht", "f-dht", "t-dht", "p-dht"]


def run_name(path: Path) -> tuple[str, str]:
    """'f-dht-seed1.json' -> ('f-dht', '1'); 'full.json' -> ('full', '')."""
    base, _, seed = path.stem.partition("-seed")
    return base, seed


def row_name(path: Path, metrics: dict) -> str:
    """'BL1 (full model)', 'DHT F-DHT', 'DHT F-DHT seed 1', ... from the file's name."""
    base, seed = run_name(path)
    name = "BL1 (full model)" if base == "full" else f"DHT {base.upper()}" if metrics["method"] == "dht" else base
    return f"{name} seed {seed}" if seed else name


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/ag_news")
    runs = [p for p in folder.glob("*.json") if run_name(p)[0] in ORDER]
    files = sorted(runs, key=lambda p: (ORDER.index(run_name(p)[0]), p.stem))
    print("| method | accuracy | macro-F1 | train FLOP ratio (paper / all-in) | test FLOP ratio (paper / all-in) "
          "| train s | test s |")
    print("|---|---|---|---|---|---|---|")
    for path in files:
        m = json.loads(path.read_text())
        tr, te = m["train"], m["test"]
        print(f"| {row_name(path, m)} | {te['accuracy']:.4f} | {te['f1_macro']:.4f} "
              f"| {tr['flop_ratio']:.3f} / {tr.get('flop_ratio_all_in', tr['flop_ratio']):.3f} "
              f"| {te['flop_ratio']:.3f} / {te.get('flop_ratio_all_in', te['flop_ratio']):.3f} "
              f"| {tr['seconds']:.0f} | {te['seconds']:.0f} |")


if __name__ == "__main__":
    main()
