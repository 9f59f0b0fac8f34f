"""Transformer⁻¹'s acceptance table (transformer_inverse.md §12, §16) from finished runs, against BL1 in one process.

For each T⁻¹ run (NAME=RUN): the policy along its cost-weight curve (``--cost-weights``), the predictor alone
(``--quantiles``), the entropy exit on the same backbone and exits (``--thresholds``), and the two oracles of
§9 with the policy's gap to oracle-fidelity(f). BL1 (``--bl1``) is evaluated in the same process
before the first row, after every ``--bl1-every`` rows and after the last; a row's reference seconds are the
mean of the BL1 timings just before and after it. The policy at the run's own
λ also gets:
- the switching overhead per layer: (seconds of halting layer by layer with the controller − seconds of the
  same samples run at their depths as fixed plans) / the layer boundaries the batches crossed, in μs;
- the peak inference memory against BL1's: each evaluated in a fresh process, the peak resident set size
  during evaluation minus the resident size after loading (Linux ``clear_refs``; ``dht.training.memory``).

Writes ``--output``/summary.json (a list of objects with run, controller, cost_weight, f1_macro,
test_flop_ratio_all_in, test_wall_ratio, switch_overhead_us_per_layer, peak_memory_ratio and more),
table.md, pareto.png (F1 against inference FLOPs with BL1, FastBERT and DHT from ``--fastbert``, dht bench's
results.json, and more DHT runs from ``--dht`` metrics files) and each run's metrics.json.

Usage: python bench/tinv_report.py --bl1 runs/bl1 tinv=runs/tinv-s0 [--output bench/results/ag_news/tinv]
       python bench/tinv_report.py --table [FOLDER]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import dht.methods  # noqa: F401  (registers the built-in methods)
from dht.benchmark.paths import switch_overhead
from dht.methods.tinv_inference import parse_route
from dht.provenance import repo_path, write_atomically, write_result
from dht.training.evaluation import predict_split
from dht.training.loop import evaluate, load_run
from dht.training.operating import cheapest_good_route, oracle_scores, route_predictions
from dht.training.setup import Prepared

COLUMNS = ("| run | controller | knob | macro-F1 | accuracy | inference FLOPs paper-style / all-in "
           "| paths (depth: share) | test wall ratio to BL1 | switch overhead μs/layer | peak memory ratio to BL1 "
           "| fidelity f, FLOPs / oracle-fidelity(f) | training FLOPs paper-style / all-in, seconds all-in |")


def paths(routes: dict[str, Any]) -> str:
    """'1:0.63 2:0.09 ...' by depth (one width), or '1L8H:0.40 1L12H:0.23 ...' when widths differ."""
    parsed = sorted(((*parse_route(name), value["share"]) for name, value in routes.items()))
    one_width = len({w for _, w, _ in parsed}) == 1
    return " ".join(f"{d}:{share:.2f}" if one_width else f"{d}L{w}H:{share:.2f}" for d, w, share in parsed)


def timed_rows(bl1: Prepared, prepared: Prepared, settings: list[dict[str, Any]],
               bl1_every: int) -> list[tuple[dict[str, Any], float]]:
    """Evaluate each setting of inference options, with BL1 evaluated before the first, after every
    ``bl1_every`` settings and after the last; each row's reference is the mean of the BL1 timings just
    before and just after it. Returns each setting's test result and wall-time ratio to BL1."""
    results, marks, reference = [], [], [evaluate(bl1)["seconds"]]
    for i, changes in enumerate(settings):
        prepared.method.set_inference_options(**changes)
        results.append(evaluate(prepared))
        marks.append(len(reference) - 1)
        if (i + 1) % bl1_every == 0 or i == len(settings) - 1:
            reference.append(evaluate(bl1)["seconds"])
    return [(test, test["seconds"] / ((reference[m] + reference[m + 1]) / 2)) for test, m in zip(results, marks)]


def fidelity_gap(prepared: Prepared) -> dict[str, Any]:
    """Spec §9 at the method's current options: its fidelity f (agreement with the full model), the FLOPs of
    oracle-fidelity(f) (each sample on its cheapest path that agrees with the full model, the (1 − f)·n
    samples whose such path is dearest given up on the cheapest path) and the gap between the two."""
    method, split = prepared.method, prepared.test
    per_route = [route_predictions(prepared, route) for route in method.fixed_routes()]
    predictions = torch.stack([r.predictions for r in per_route])  # (R, N); the last route is the full model
    flops = torch.stack([r.flops for r in per_route])
    full = per_route[0].full_flops
    agreeing = cheapest_good_route(flops, predictions == predictions[-1])  # (N,)
    cost = flops.gather(0, agreeing[None]).squeeze(0)
    ours = predict_split(method, split.ids, split.labels, prepared.run.train.eval_batch_size, prepared.pad_id)
    f = float((ours.predictions == predictions[-1]).float().mean())
    # Given up: the samples whose agreeing path is deepest (spec §9's largest d_f(x)), dearest first among equals.
    depth = torch.tensor([parse_route(route)[0] for route in method.fixed_routes()])[agreeing]
    order = torch.argsort(depth.double() * (cost.max() + 1) + cost, descending=True, stable=True)
    given_up = order[: round((1 - f) * len(cost))]
    chosen = agreeing.clone()
    chosen[given_up] = flops.argmin(0)[given_up]
    oracle = float(flops.gather(0, chosen[None]).sum() / full.sum())
    ratio = float(ours.flops.sum() / full.sum())
    return {"fidelity": f, "oracle_fidelity_f_flop_ratio": oracle, "flop_ratio": ratio, "gap": ratio / oracle}


MEMORY_PROBE = """
import json, sys
from pathlib import Path
from dht.training.loop import evaluate, load_run
from dht.training.memory import peak_resident_bytes, reset_peak, resident_bytes
import dht.methods
prepared = load_run(Path(sys.argv[1]))
reset = reset_peak(); loaded = resident_bytes()
evaluate(prepared)
print(json.dumps({"loaded": loaded, "peak_growth": peak_resident_bytes(reset) - loaded, "reset": reset}))
"""


def peak_memory(run: Path) -> dict[str, Any]:
    """Peak resident growth while evaluating ``run`` in a fresh process (bytes)."""
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(run)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(args: argparse.Namespace) -> list[dict[str, Any]]:
    bl1 = load_run(args.bl1)
    bl1_memory = None if args.curves_only else peak_memory(args.bl1)
    rows: list[dict[str, Any]] = []
    for name, folder in (spec.split("=", 1) for spec in args.runs):
        folder = Path(folder)
        prepared = load_run(folder)
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        own = prepared.method.options
        base = {"run": name, "folder": str(folder), "train_flop_ratio": metrics["train"]["flop_ratio"],
                "train_flop_ratio_all_in": metrics["train"]["flop_ratio_all_in"],
                "train_seconds_all_in": metrics["train"].get("seconds_all_in", metrics["train"]["seconds"])}
        weights = sorted(set(args.cost_weights) | {own.cost_weight})  # the run's own λ gets the extra measurements
        settings = ([("policy", {"cost_weight": w}) for w in weights]
                    + [("predictor", {"predictor_quantile": q}) for q in args.quantiles]
                    + [("entropy", {"entropy_threshold": t}) for t in args.thresholds])
        timed = timed_rows(bl1, prepared, [{"controller": c, **knob} for c, knob in settings], args.bl1_every)
        for (controller, knob), (test, wall) in zip(settings, timed):
            rows.append({**base, "controller": controller, "cost_weight": knob.get("cost_weight"), "knob": knob,
                         "f1_macro": test["f1_macro"], "accuracy": test["accuracy"],
                         "test_flop_ratio": test["flop_ratio"], "test_flop_ratio_all_in": test["flop_ratio_all_in"],
                         "paths": test.get("routes", {}), "test_wall_ratio": wall,
                         "switch_overhead_us_per_layer": None, "peak_memory_ratio": None})
        prepared.method.set_inference_options(controller="policy", cost_weight=own.cost_weight)
        args.output.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / "metrics.json", args.output / f"metrics-{name}.json")
        if args.curves_only:
            continue
        main_row = next(r for r in rows if r["run"] == name and r["controller"] == "policy"
                        and r["cost_weight"] == own.cost_weight)
        main_row.update(switch_overhead(prepared))
        memory = peak_memory(folder)
        main_row.update(peak_memory_ratio=memory["peak_growth"] / bl1_memory["peak_growth"],
                        peak_memory=memory, bl1_peak_memory=bl1_memory, **fidelity_gap(prepared))
        oracles = oracle_scores(prepared)
        for oracle in ("oracle_correct", "oracle_agrees_with_full"):
            scores = oracles[oracle]
            rows.append({**base, "controller": oracle, "cost_weight": None, "knob": {},
                         "f1_macro": scores["f1_macro"], "accuracy": scores["accuracy"],
                         "test_flop_ratio": scores["flop_ratio"], "test_flop_ratio_all_in": scores["flop_ratio"],
                         "paths": {k: {"share": v} for k, v in scores["shares"].items()}, "test_wall_ratio": None,
                         "switch_overhead_us_per_layer": None, "peak_memory_ratio": None})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [COLUMNS, "|" + "---|" * COLUMNS.count(" | ") + "---|"]
    number = lambda value, digits: "" if value is None else f"{value:.{digits}f}"
    for r in rows:
        knob = ", ".join(f"{k} {v:g}" for k, v in r["knob"].items())
        gap = f"{r['fidelity']:.3f}, {r['gap']:.2f}" if "gap" in r else ""
        training = (f"{r['train_flop_ratio']:.3f} / {r['train_flop_ratio_all_in']:.3f}, "
                    f"{r['train_seconds_all_in']:.0f} s" if r["controller"] == "policy" and "gap" in r else "")
        lines.append(f"| {r['run']} | {r['controller']} | {knob} | {r['f1_macro']:.4f} | {r['accuracy']:.4f} "
                     f"| {r['test_flop_ratio']:.3f} / {r['test_flop_ratio_all_in']:.3f} | {paths(r['paths'])} "
                     f"| {number(r['test_wall_ratio'], 3)} | {number(r['switch_overhead_us_per_layer'], 0)} "
                     f"| {number(r['peak_memory_ratio'], 3)} | {gap} | {training} |")
    return "\n".join(lines) + "\n"


def pareto(rows: list[dict[str, Any]], fastbert: Path | None, dht: list[Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for controller, style in (("policy", "o-"), ("predictor", "s--"), ("entropy", "^:")):
        chosen = sorted((r for r in rows if r["controller"] == controller), key=lambda r: r["test_flop_ratio_all_in"])
        axes.plot([r["test_flop_ratio_all_in"] for r in chosen], [r["f1_macro"] for r in chosen], style,
                  label=f"T⁻¹ {controller}")
    for r in rows:
        if r["controller"].startswith("oracle"):
            axes.plot(r["test_flop_ratio_all_in"], r["f1_macro"], "k*", ms=9)
            axes.annotate(r["controller"], (r["test_flop_ratio_all_in"], r["f1_macro"]), fontsize=7)
    if fastbert is not None:
        marks = {"full": ("D", "grey"), "fastbert": ("v", "grey"), "dht": ("P", "tab:red")}
        for r in json.loads(fastbert.read_text(encoding="utf-8")):  # dht bench's results.json: a list of rows
            if r["method"] in marks:
                marker, colour = marks[r["method"]]
                axes.plot(r["test_flop_ratio_all_in"], r["f1_macro"], marker, color=colour)
                axes.annotate(r["config"], (r["test_flop_ratio_all_in"], r["f1_macro"]), fontsize=7)
    for file in dht:
        test = json.loads(file.read_text(encoding="utf-8"))["test"]
        axes.plot(test["flop_ratio_all_in"], test["f1_macro"], "P", color="tab:red")
        axes.annotate(file.parent.name, (test["flop_ratio_all_in"], test["f1_macro"]), fontsize=7)
    axes.set_xlabel("inference FLOPs, all-in, against BL1")
    axes.set_ylabel("macro-F1 (test)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def paths_table(paths_file: Path) -> str:
    """A ``dht bench-paths`` file as a table."""
    result = json.loads(paths_file.read_text(encoding="utf-8"))["result"]
    lines = ["| mode | warm-up s | first pass s | steady s | wall ratio to BL1 | FLOPs all-in | switching μs/layer "
             "(halting − replay s, boundaries) | max log-prob difference to eager | same paths |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in result["modes"]:
        switching = m["switch_overhead_us_per_layer"]
        lines.append(f"| {m['mode']} | {m['warm_up_seconds']:.1f} | {m['first_pass_seconds']:.1f} "
                     f"| {m['steady_seconds']:.1f} | {m.get('wall_ratio_to_bl1', float('nan')):.3f} "
                     f"| {m['flop_ratio_all_in']:.3f} | {'' if switching is None else f'{switching:.0f}'} "
                     f"({m['halting_seconds']:.1f} − {m['fixed_plan_seconds']:.1f}, {m['layer_boundaries']}) "
                     f"| {m['max_log_probability_difference_to_eager']:.1e} | {m['same_paths_as_eager']} |")
    return "\n".join(lines) + "\n"


def merge_paths(folder: Path, paths_file: Path) -> None:
    """Replace the switching overhead of the policy row measured in the report by ``dht bench-paths``' eager
    one (same run), and measure its fidelity gap again (``fidelity_gap``, as this code has it), keeping both
    provenances; rewrite table.md."""
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    paths = json.loads(paths_file.read_text(encoding="utf-8"))
    eager = next(mode for mode in paths["result"]["modes"] if mode["mode"] == "eager")
    for row in summary["result"]:
        if row["folder"] == paths["result"]["run"] and row["switch_overhead_us_per_layer"] is not None:
            row.update({key: eager[key] for key in ("halting_seconds", "fixed_plan_seconds", "layer_boundaries",
                                                    "switch_overhead_us_per_layer")})
            row["switch_overhead_from"] = str(paths_file)
            prepared = load_run(Path(row["folder"]))
            prepared.method.set_inference_options(controller="policy", cost_weight=row["cost_weight"])
            row.update(fidelity_gap(prepared))
    summary.setdefault("merged", []).append({"file": str(paths_file), "provenance": paths["provenance"]})
    write_atomically(folder / "summary.json", json.dumps(summary, indent=1) + "\n")
    (folder / "table.md").write_text(table(summary["result"]), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="NAME=RUN: finished tinv runs")
    parser.add_argument("--bl1", type=Path)
    parser.add_argument("--cost-weights", type=float, nargs="+", default=[1 / 64, 1 / 16, 0.125, 0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--bl1-every", type=int, default=4, help="time BL1 again after this many rows")
    parser.add_argument("--curves-only", action="store_true", help="the controllers' rows only: no switching "
                        "overhead, memory, fidelity gap or oracles (other seeds of a run already reported)")
    parser.add_argument("--fastbert", type=Path, default=repo_path("bench/results/ag_news/results.json"))
    parser.add_argument("--dht", type=Path, nargs="*", default=[], help="DHT metrics.json files for the plot")
    parser.add_argument("--output", type=Path, default=repo_path("bench/results/ag_news/tinv"))
    parser.add_argument("--table", nargs="?", const=repo_path("bench/results/ag_news/tinv"), type=Path)
    parser.add_argument("--paths-table", type=Path, help="print a `dht bench-paths` JSON as a table")
    parser.add_argument("--merge-paths", type=Path, help="put a `dht bench-paths` JSON's eager switching overhead "
                        "into the --output folder's summary.json (its run's policy row at the run's own λ)")
    args = parser.parse_args()
    if args.merge_paths is not None:
        merge_paths(args.output, args.merge_paths)
        return
    if args.paths_table is not None:
        print(paths_table(args.paths_table), end="")
        return
    if args.table is not None:
        print(table(json.loads((args.table / "summary.json").read_text(encoding="utf-8"))["result"]), end="")
        return
    if args.bl1 is None or not args.runs:
        parser.error("give --bl1 RUN and at least one NAME=RUN")
    rows = report(args)
    write_result(args.output / "summary.json", rows, "cpu")
    (args.output / "table.md").write_text(table(rows), encoding="utf-8")
    pareto(rows, args.fastbert if args.fastbert and args.fastbert.is_file() else None, args.dht,
           args.output / "pareto.png")
    print(table(rows), end="")


if __name__ == "__main__":
    main()
