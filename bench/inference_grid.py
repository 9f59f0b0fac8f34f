"""Finished DHT runs evaluated at a grid of inference settings: cost weight λ × continuation threshold τ.

Both are inference options (``--cost-weight``, ``--continue-above``), so one trained run gives every
point; nothing is retrained. The point of the run's own settings is its metrics.json's test block (the
same deterministic evaluation), not evaluated again. Rows have the format of ``bench/front_sweep.py``'s, so
``python bench/front_report.py sweep FILE`` tables their means over seeds against FastBERT's curve. The
FastBERT rows come from a ``dht bench`` results.json (``--fastbert``): its speeds, as they were measured.

Usage: python bench/inference_grid.py RUN [RUN ...] --name NAME [--cost-weights 0 10 50]
       [--continue-above 1 0.5 0.3 0.2 0.1] [--fastbert bench/results/ag_news/results.json]
       [--output bench/results/ag_news/levers/grid-NAME.json] [--device D]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from front_sweep import row  # bench/ is the script's folder

import dht.methods  # noqa: F401  (registers the methods)
from dht.provenance import repo_path, write_result
from dht.training.loop import evaluate, load_run
from dht.training.setup import resolve_device


def continued_share(routes: dict[str, dict[str, float]] | None) -> float:
    """The share of test samples that continued past their arm (routes labelled 'A>B')."""
    return sum(r["share"] for name, r in (routes or {}).items() if ">" in name)


def fastbert_rows(path: Path) -> list[dict[str, Any]]:
    """FastBERT's rows of a ``dht bench`` results.json, in the sweep's format (its seed: the bench's)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    results = document["result"] if isinstance(document, dict) else document
    return [{"seed": r.get("seed", 0), "method": "fastbert", "config": "fastbert", "knob": "speed",
             "value": r["options"]["speed"],
             "f1_macro": r["f1_macro"], "accuracy": r["accuracy"], "test_flop_ratio": r["test_flop_ratio"],
             "test_flop_ratio_all_in": r["test_flop_ratio_all_in"],
             "train_flop_ratio_all_in": r["train_flop_ratio_all_in"], "train_seconds": r["train_seconds"],
             "test_seconds": r["test_seconds"]} for r in results if r["method"] == "fastbert"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished DHT runs (one per seed)")
    parser.add_argument("--name", required=True, help="the rows' config name, e.g. f-dht-sd")
    parser.add_argument("--cost-weights", type=float, nargs="+", default=[0.0])
    parser.add_argument("--continue-above", type=float, nargs="+", default=[1.0, 0.5, 0.3, 0.2, 0.1])
    parser.add_argument("--fastbert", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    output = args.output or repo_path(f"bench/results/ag_news/levers/grid-{args.name}.json")
    rows: list[dict[str, Any]] = fastbert_rows(args.fastbert) if args.fastbert else []
    for folder in args.runs:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        prepared = load_run(folder, device=args.device)
        trained = prepared.method.options
        for weight in args.cost_weights:
            for tau in args.continue_above:
                if (weight, tau) == (trained.cost_weight, trained.continue_above):
                    test = metrics["test"]  # the run's own evaluation, with these very settings
                else:
                    prepared.method.set_inference_options(cost_weight=weight, continue_above=tau)
                    test = evaluate(prepared)
                knob = f"λ {weight:g}, τ {tau:g}"
                rows.append({**row(prepared.run.train.seed, "dht", args.name, knob, None, test, metrics),
                             "cost_weight": weight, "continue_above": tau, "run": str(folder),
                             "continued_share": continued_share(test.get("routes"))})
                print(f"{folder} {knob}: macro-F1 {test['f1_macro']:.4f} at {test['flop_ratio_all_in']:.3f}, "
                      f"continued {rows[-1]['continued_share']:.2f}", flush=True)
        write_result(output, rows, resolve_device(args.device))


if __name__ == "__main__":
    main()
