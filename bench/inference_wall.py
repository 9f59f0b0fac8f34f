"""Inference wall time against BL1: is the FLOP saving real in seconds?

Evaluates saved runs on the same test split in one process, round-robin (each run once per round,
``--rounds`` rounds, median seconds), and writes for each run its accuracy, macro-F1, inference FLOP
ratios and the wall-time ratio to the reference run (the first one, normally BL1).

``--also KEY=VALUE ...`` times every run after the reference a second time with these inference options
(e.g. ``head_sets=per-batch``), in the same rounds, so an inference option's seconds and FLOPs are compared
on one clock.

Usage: python bench/inference_wall.py REFERENCE_RUN RUN [RUN ...] [--rounds 3] [--also KEY=VALUE ...]
       [--output PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import dht.methods  # noqa: F401  (registers the methods)
from dht.benchmark import time_inference
from dht.cli.flags import parse_flag_value
from dht.provenance import repo_path, write_result
from dht.training.config import read_run_settings
from dht.training.hooks import METHODS
from dht.training.loop import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders; the first is the reference")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--also", nargs="+", default=[], metavar="KEY=VALUE",
                        help="inference options to time every run but the reference with, beside it as saved")
    parser.add_argument("--output", type=Path, default=repo_path("bench/results/ag_news/inference_wall.json"))
    args = parser.parse_args()
    if len(args.runs) < 2:
        parser.error("give the reference run and at least one other")
    try:
        timed = [(run, {}) for run in args.runs]
        if args.also:  # each run's options typed as its method declares them, as `dht evaluate` reads flags
            timed += [(run, parse_options(args.also, read_run_settings(run).method)) for run in args.runs[1:]]
        prepared = [load_run(run, overrides=options or None) for run, options in timed]
    except ValueError as error:  # a bad pair, or an option a run's method does not take at inference
        parser.error(str(error))
    samples = {len(p.test) for p in prepared}
    if len(samples) != 1:
        parser.error(f"the runs evaluate different test sets (sizes {sorted(samples)})")
    results, median = time_inference(prepared, args.rounds)
    rows = []
    for (run, options), p, result, wall in zip(timed, prepared, results, median):
        rows.append({"run": str(run), "method": p.run.method, "config": p.run.options.get("config"),
                     "inference_options": options,
                     "accuracy": result["accuracy"], "f1_macro": result["f1_macro"],
                     "flop_ratio": result["flop_ratio"], "flop_ratio_all_in": result["flop_ratio_all_in"],
                     "seconds": wall, "wall_ratio": wall / median[0]})
    out = {"reference": str(args.runs[0]), "samples": samples.pop(), "rounds": args.rounds, "rows": rows}
    write_result(args.output, out, prepared[0].method.device)
    for row in rows:
        print(f"{row['method']:5} {str(row['config']):6} {json.dumps(row['inference_options'])} "
              f"F1 {row['f1_macro']:.4f}  FLOPs {row['flop_ratio']:.3f} (all-in {row['flop_ratio_all_in']:.3f})  "
              f"wall {row['wall_ratio']:.3f}  {row['seconds']:.1f} s")


def parse_options(pairs: list[str], method: str) -> dict[str, Any]:
    """``["head_sets=per-batch", "continue_above=0.3"]`` -> {"head_sets": "per-batch", "continue_above": 0.3}:
    each value read as the command line reads ``method``'s option of that name. Raises ValueError on a pair
    without ``=``, an option the method does not take, or a value its type does not take."""
    fields = {field.name: field for field in METHODS[method].Options.fields()}
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--also takes KEY=VALUE pairs, got {pair!r}")
        if key not in fields:
            raise ValueError(f"--also: method {method} takes no option {key}")
        options[key] = parse_flag_value(fields[key], value)
    return options


if __name__ == "__main__":
    main()
