"""Render the committed acceptance runs (bench/results/DATASET/*.json metrics) as a markdown table.

Usage: python bench/results_table.py [bench/results/ag_news] > table.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["full", "s-dht", "f-dht", "t-dht", "p-dht"]


def row_name(path: Path, metrics: dict) -> str:
    config = metrics.get("options", {}).get("config")
    return f"DHT {config.upper()}" if config else {"full": "BL1 (full model)"}.get(metrics["method"], metrics["method"])


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/ag_news")
    files = sorted((p for p in folder.glob("*.json") if p.stem in ORDER), key=lambda p: ORDER.index(p.stem))
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
