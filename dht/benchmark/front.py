"""The bench's accuracy-for-cost front: operating points, oracles, costs with teachers, means over seeds.

- ``operating_points``: each trained run of a method with a knob (FastBERT's speed, DHT's cost weight) is
  evaluated at its knob's ``curve`` values, so a run is a curve and not one point; a method whose samples
  take routes also gets its two oracle routers (``oracle_scores``: the limit of routing on its network).
- ``with_teacher``: a distilled student or FastBERT needs a trained BL1 first. Its training cost counts
  its teacher's: both runs' all-in FLOPs against the bench's BL1 run, scaled by the samples each trained
  on (a run's FLOP ratio is against the full model on its own samples).
- ``front_rows``: one row per method and configuration, means and standard deviations over seeds
  (``front.json``).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from dht.training.hooks import BenchRun
from dht.training.loop import evaluate
from dht.training.operating import oracle_scores
from dht.training.setup import Prepared

ORACLES = ("oracle_correct", "oracle_agrees_with_full")


def read_train(folder: Path) -> dict[str, Any]:
    """A finished run's training block (metrics.json's ``train``)."""
    return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["train"]


def with_teacher(trained: dict[str, Any], reference: dict[str, Any], teacher: dict[str, Any] | None) -> float:
    """Training FLOPs (all-in) of a run plus its teacher's, as a ratio to the reference (BL1) run's.

    Each block is a metrics.json ``train`` block: ``flop_ratio_all_in`` is against the full model on that
    run's own ``samples``, so each is scaled by its samples over the reference's."""
    def share(block: dict[str, Any]) -> float:
        return block["flop_ratio_all_in"] * block["samples"] / (reference["flop_ratio_all_in"] * reference["samples"])
    return share(trained) + (share(teacher) if teacher is not None else 0.0)


def point(method: str, config: str, seed: int, kind: str, knob: str | None, value: float | None,
          scores: dict[str, Any], costs: dict[str, float]) -> dict[str, Any]:
    """One operating point or oracle row of curves.json."""
    return {"method": method, "config": config, "seed": seed, "kind": kind, "knob": knob, "value": value,
            "f1_macro": scores["f1_macro"], "accuracy": scores["accuracy"],
            "test_flop_ratio_all_in": scores.get("flop_ratio_all_in", scores["flop_ratio"]), **costs}


def operating_points(prepared: Prepared, entry: BenchRun, seed: int, costs: dict[str, float],
                     evaluated: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The run at each value of its method's knob curve, then its oracle routers (for methods with routes,
    when the entry asks for them: ``BenchRun.oracles``).

    ``evaluated``: the run's scores as the entry set it (the bench's timed evaluation), used for the curve's
    value that equals the entry's instead of evaluating it again (inference is deterministic). The method's
    knob is left as the entry set it. An oracle's FLOPs are its chosen routes' networks."""
    method = prepared.method
    rows: list[dict[str, Any]] = []
    knob = method.active_knob
    if knob is not None and knob.curve:
        kept = getattr(method.options, knob.option)
        try:
            for value in knob.curve:
                if evaluated is not None and value == kept:
                    scores = evaluated
                else:
                    method.set_inference_options(**{knob.option: value})
                    scores = evaluate(prepared)
                rows.append(point(entry.method, entry.run, seed, "knob", knob.option, value, scores, costs))
        finally:
            method.set_inference_options(**{knob.option: kept})
    if entry.oracles and method.fixed_routes():
        oracle = oracle_scores(prepared)
        rows += [point(entry.method, entry.run, seed, kind, None, None, oracle[kind], costs) for kind in ORACLES]
    return rows


POINTS = "bench_points.json"  # a run's operating points and oracles, kept in its folder


def run_points(prepared: Prepared, entry: BenchRun, folder: Path, seed: int, costs: dict[str, float],
               key: dict[str, Any], evaluated: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``operating_points``, or what an earlier bench kept in ``folder`` (``POINTS``) under the same ``key``
    (the entry, its trained run, the code and device): the points are deterministic, so a stopped timing
    pass, or ``dht bench --points-only`` run beside training, leaves them to the next bench."""
    kept = kept_points(folder, key)
    if kept is not None:
        return kept
    points = operating_points(prepared, entry, seed, costs, evaluated)
    partial = (folder / POINTS).with_suffix(".partial")
    partial.write_text(json.dumps({"key": key, "points": points}, indent=1), encoding="utf-8")
    partial.replace(folder / POINTS)  # whole or absent
    return points


def kept_points(folder: Path, key: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The points kept in ``folder`` (``POINTS``) under ``key``, or None (none kept, or under another key)."""
    kept = folder / POINTS
    if not kept.is_file():
        return None
    saved = json.loads(kept.read_text(encoding="utf-8"))
    return saved["points"] if saved.get("key") == json.loads(json.dumps(key)) else None  # compared as kept


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def front_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """results.json rows (one per run and seed) -> one row per (method, config) with means over seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["config"])].append(row)
    front = []
    for (method, config), runs in groups.items():
        f1, f1_std = mean_std([r["f1_macro"] for r in runs])
        front.append({"method": method, "config": config, "seeds": sorted(r["seed"] for r in runs),
                      "f1_macro_mean": f1, "f1_macro_std": f1_std,
                      **{f"{name}_mean": statistics.mean(r[name] for r in runs)
                         for name in ("test_flop_ratio_all_in", "train_flop_ratio_all_in",
                                      "train_flop_ratio_with_teacher", "test_wall_ratio")}})
    return front


def curve_means(points: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[tuple[float, float, float]]]:
    """curves.json rows -> per (method, config, kind), (value, mean inference FLOPs, mean macro-F1) over
    seeds, sorted by FLOPs; an oracle kind has one point."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for p in points:
        groups[(p["method"], p["config"], p["kind"], p["value"])].append(p)
    curves: dict[tuple[str, str, str], list[tuple[float, float, float]]] = defaultdict(list)
    for (method, config, kind, value), ps in groups.items():
        curves[(method, config, kind)].append((value, statistics.mean(p["test_flop_ratio_all_in"] for p in ps),
                                               statistics.mean(p["f1_macro"] for p in ps)))
    return {key: sorted(values, key=lambda v: v[1]) for key, values in curves.items()}


def front_table(front: list[dict[str, Any]]) -> str:
    """front.json as markdown: means (and macro-F1's standard deviation) over seeds."""
    lines = ["| method | config | seeds | macro-F1 mean ± std | inference FLOPs all-in | training FLOPs all-in "
             "| training FLOPs with teacher | inference wall-time vs BL1 |", "|---|---|---|---|---|---|---|---|"]
    for r in front:
        lines.append(f"| {r['method']} | {r['config']} | {len(r['seeds'])} | {r['f1_macro_mean']:.4f} ± "
                     f"{r['f1_macro_std']:.4f} | {r['test_flop_ratio_all_in_mean']:.3f} "
                     f"| {r['train_flop_ratio_all_in_mean']:.3f} | {r['train_flop_ratio_with_teacher_mean']:.3f} "
                     f"| {r['test_wall_ratio_mean']:.3f} |")
    return "\n".join(lines) + "\n"
