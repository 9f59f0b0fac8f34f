"""One trained run, many operating points: `dht evaluate RUN --budget R` for several R, and the oracles.

For each target R the run's knob (DHT's cost weight, or its continuation threshold when the cost weight is
at the cheapest end, as ``--cost-weight 1000`` sets it; FastBERT's speed) is set by bisection on 2,048
seeded training rows, every class weighted equally (on its held-out rows for a run trained with
``--holdout``), then the test split is evaluated; the row records the knob's value and where the test
ratio landed. ``--oracle`` adds the run's two oracle routers (every route on every test sample).

Usage: python bench/budget_curve.py RUN [--budgets 0.3 0.4 0.5 0.6 0.8] [--oracle] [--cost-weight L] [--device D]
       [--output bench/results/ag_news/budget_curve.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import dht.methods  # noqa: F401  (registers the methods)
from dht.provenance import repo_path, write_result
from dht.training.loop import evaluate, load_run
from dht.training.operating import budget_search, oracle_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run of a method with a knob (dht, fastbert)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.8])
    parser.add_argument("--oracle", action="store_true")
    parser.add_argument("--cost-weight", type=float, default=None, help="DHT: evaluate with this cost weight")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", type=Path, default=repo_path("bench/results/ag_news/budget_curve.json"))
    args = parser.parse_args()
    overrides = None if args.cost_weight is None else {"cost_weight": args.cost_weight}
    prepared = load_run(args.run, overrides=overrides, device=args.device)
    metrics = {"run": str(args.run), "method": prepared.run.method, "options": prepared.run.options,
               "overrides": overrides or {},
               "seed": prepared.run.train.seed}
    rows: list[dict[str, Any]] = []
    knob = prepared.method.active_knob
    start = {knob.option: getattr(prepared.method.options, knob.option)} if knob is not None else {}
    for target in args.budgets:
        # Each target from the run's own knob: a search that ends at λ's cheapest end (1000) would
        # otherwise hand the next one the continuation threshold as its knob (DHTMethod.knob_for).
        prepared.method.set_inference_options(**start)
        found = budget_search(prepared, target)
        test = evaluate(prepared)
        rows.append({"target": target, "option": found["option"], "value": found["value"],
                     "train_flop_ratio_all_in": found["train_flop_ratio_all_in"], "rows": found["rows"],
                     "reachable_on_train": found["reachable"], "f1_macro": test["f1_macro"],
                     "accuracy": test["accuracy"], "test_flop_ratio": test["flop_ratio"],
                     "test_flop_ratio_all_in": test["flop_ratio_all_in"],
                     "landed_within_0.02": abs(test["flop_ratio_all_in"] - target) <= 0.02,
                     "routes": test.get("routes")})
        print(f"R {target}: {found['option']} {found['value']:.4g} -> test {test['flop_ratio_all_in']:.3f} "
              f"all-in, macro-F1 {test['f1_macro']:.4f}", flush=True)
    result: dict[str, Any] = {**metrics, "budgets": rows}
    if args.oracle:
        result["oracle"] = oracle_scores(prepared)
    write_result(args.output, result, prepared.method.device)


if __name__ == "__main__":
    main()
