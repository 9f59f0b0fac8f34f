"""What the network a run trained can do at a fixed depth: every test sample through the first d layers
with all heads, no bandits, for d = b, b + c, ..., N_L (default 2, 4, 6).

For a DHT run this separates the two ways it can lose F1 against BL1: the network it trained (its
full-depth score) and the bandits' routing (its dynamic score against the fixed depths of similar cost).

Usage: python bench/fixed_depth.py RUN [RUN ...] [--depths 2 4 6] [--output PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import dht.methods  # noqa: F401  (registers the methods the runs name)
from dht.model import ExecutionPlan
from dht.provenance import repo_path, write_result
from dht.training.hooks import Method
from dht.training.loop import evaluate, load_run


class FixedDepth(Method):
    """The first ``depth`` layers with all heads, then the shared classifier, for every sample."""

    def __init__(self, method: Method, depth: int) -> None:
        # The run's options belong to its own method; this one has none.
        super().__init__(method.model, dataclasses.replace(method.run, options={}))
        self.depth = depth

    def plans(self, batch):
        return ExecutionPlan.first(self.depth, self.model.config.num_heads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished run folders")
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--output", type=Path, default=repo_path("bench/results/ag_news/fixed_depth.json"))
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        prepared = load_run(run)
        dynamic = json.loads((run / "metrics.json").read_text())["test"]
        row = {"run": str(run), "method": prepared.run.method, "config": prepared.run.options.get("config"),
               "seed": prepared.run.train.seed, "dynamic": {k: dynamic[k] for k in ("f1_macro", "flop_ratio")}}
        for depth in args.depths:
            result = evaluate(dataclasses.replace(prepared, method=FixedDepth(prepared.method, depth)))
            row[f"depth_{depth}"] = {k: result[k] for k in ("f1_macro", "flop_ratio")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_result(args.output, rows)


if __name__ == "__main__":
    main()
