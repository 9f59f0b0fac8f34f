"""ACM's acceptance table (acm.md §10) from finished run folders, timed against BL1 in one process.

Rows: each trained ACM run as trained (NAME=RUN); the static ladder of one run (``--ladder RUN``: every
token runs k = 1..N learners, gates off); and that run at inference budgets (``--budgets R ...``: the gate
bias λ found by ``dht evaluate --budget R``'s bisection on training rows, R an all-in inference FLOP ratio).
BL1 (``--bl1``) and every row are evaluated on the same test split round-robin (``--rounds``; median
seconds). Writes ``--output``/summary.json (a list of objects with run, budget, f1_macro,
test_flop_ratio_all_in, realised_fraction, test_wall_ratio, train_flop_ratio_all_in and more), table.md,
histograms.png (each trained run's per-sample learner fraction), tokens-NAME.png/json (the first trained
run's learners per token on a few test samples, with the 20 cheapest and costliest) and each trained run's
metrics.json.

Usage: python bench/acm_report.py --bl1 runs/bl1 acm-b50=runs/acm-b50 [NAME=RUN ...] [--ladder runs/acm-b50]
       [--budgets 0.55 0.62 0.75 0.82] [--rounds 2] [--output bench/results/ag_news/acm]
       python bench/acm_report.py --table [FOLDER]   (print a written folder's table)
       python bench/acm_report.py --pareto bench/results/ag_news/results.json   (pareto.png against dht bench's rows)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from dht.benchmark import time_inference
from dht.flops import acm_gate_flops, full_forward_flops
from dht.provenance import repo_path, write_result
from dht.training.loop import load_run
from dht.training.operating import budget_search
from dht.training.setup import Prepared

COLUMNS = ("| row | β (trained) | α_b | λ0 / λ | macro-F1 | accuracy | inference FLOP ratio (all-in) "
           "| realised learner fraction | gate share of FLOPs | test wall ratio to BL1 "
           "| train FLOP ratio phase 3 / all-in | seconds phase 1 / 2 / 3 |")


def gate_share(prepared: Prepared, flop_ratio: float) -> float:
    """The gates' share of the test split's inference FLOPs (0 with --acm-k, where no gate runs)."""
    config = prepared.model.config
    if prepared.method.options.acm_k is not None:
        return 0.0
    lengths = [len(row) for row in prepared.test.ids]
    gates = sum(lengths) * config.num_layers * acm_gate_flops(config)
    return gates / (flop_ratio * sum(full_forward_flops(config, t) for t in lengths))


def row(name: str, kind: str, folder: Path, prepared: Prepared, test: dict[str, Any], wall_ratio: float,
        found: dict[str, Any] | None) -> dict[str, Any]:
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    train, conversion = metrics["train"], metrics.get("conversion", {})
    options = prepared.method.options
    return {"run": name, "kind": kind, "folder": str(folder), "budget": options.beta,
            "gate_grad": options.gate_grad, "alpha_b": options.alpha_b, "alpha_e": options.alpha_e,
            "alpha_d": options.alpha_d, "acm_k": options.acm_k, "gate_bias": options.gate_bias,
            "calibration": metrics.get("calibration", {}), "inference_budget": found,
            "f1_macro": test["f1_macro"], "accuracy": test["accuracy"],
            "test_flop_ratio": test["flop_ratio"], "test_flop_ratio_all_in": test["flop_ratio_all_in"],
            "realised_fraction": test["acm"]["realised_fraction"],
            "per_layer_fraction": test["acm"]["per_layer_fraction"],
            "sample_fraction_histogram": test["acm"]["sample_fraction_histogram"],
            "gate_flop_share": gate_share(prepared, test["flop_ratio"]), "test_wall_ratio": wall_ratio,
            "test_seconds": test["seconds"], "train_flop_ratio": train["flop_ratio"],
            "train_flop_ratio_all_in": train["flop_ratio_all_in"], "train_seconds_phase3": train["seconds"],
            "train_seconds_all_in": train.get("seconds_all_in", train["seconds"]),
            "seconds_phase1": conversion.get("phase1", {}).get("seconds"),
            "seconds_phase2": conversion.get("phase2", {}).get("seconds"),
            "gate_labels": conversion.get("phase2", {}).get("label_shares"),
            "phase1_median_relative_error": conversion.get("phase2", {}).get("median_relative_error")}


def table(rows: list[dict[str, Any]], bl1: dict[str, Any]) -> str:
    lines = [COLUMNS, "|" + "---|" * (COLUMNS.count("|") - 1),
             f"| BL1 | | | | {bl1['f1_macro']:.4f} | {bl1['accuracy']:.4f} | 1.000 | 1 | 0 | 1.000 | 1.000 / 1.000 | "
             f"| "]
    for r in rows:
        phases = " / ".join(f"{s:.0f}" if s is not None else "" for s in
                            (r["seconds_phase1"], r["seconds_phase2"], r["train_seconds_phase3"]))
        bias = "gates off" if r["acm_k"] is not None else \
            f"{r['calibration'].get('gate_bias', 0.0):.3f} / {r['gate_bias']:.3f}"
        lines.append(f"| {r['run']} | {r['budget']} | {r['alpha_b']} | {bias} | {r['f1_macro']:.4f} "
                     f"| {r['accuracy']:.4f} "
                     f"| {r['test_flop_ratio_all_in']:.3f} | {r['realised_fraction']:.3f} | {r['gate_flop_share']:.4f} "
                     f"| {r['test_wall_ratio']:.3f} | {r['train_flop_ratio']:.3f} / {r['train_flop_ratio_all_in']:.3f} "
                     f"| {phases} |")
    return "\n".join(lines) + "\n"


def plot_histograms(rows: list[dict[str, Any]], out: Path) -> None:
    """One bar chart per trained run: samples by the fraction of learner FLOPs they spent (20 bins)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [r for r in rows if r["kind"] == "trained"]
    figure, axes = plt.subplots(1, len(trained), figsize=(3.2 * len(trained), 2.8), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], trained):
        counts = r["sample_fraction_histogram"]
        ax.bar([(i + 0.5) / len(counts) for i in range(len(counts))], counts, width=1 / len(counts))
        ax.axvline(r["budget"], color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{r['run']} (β {r['budget']})", fontsize=9)
        ax.set_xlabel("learner fraction per sample")
    axes[0][0].set_ylabel("test samples")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def token_costs(prepared: Prepared, count: int = 6) -> list[list[tuple[str, float]]]:
    """The first ``count`` test samples' tokens, each with its learners run averaged over the layers."""
    from tokenizers import Tokenizer

    from dht.data import iterate_batches

    tokenizer = Tokenizer.from_file(str(prepared.tokenizer_json))
    ids = prepared.test.ids[:count]
    batch = next(iterate_batches(ids, [0] * len(ids), len(ids), prepared.pad_id, shuffle=False))
    prepared.method.predict(batch.to(prepared.method.device))
    acms = prepared.model.acms()
    mean_k = torch.stack([acm.last.k for acm in acms]).double().mean(0).tolist()  # real tokens, row-major
    sample = acms[0].last.sample.tolist()
    tokens = batch.input_ids[batch.attention_mask.bool()].tolist()
    out: list[list[tuple[str, float]]] = [[] for _ in ids]
    for row, token, k in zip(sample, tokens, mean_k):
        out[int(batch.index[row])].append((tokenizer.id_to_token(token), k))
    return out


def plot_tokens(samples: list[list[tuple[str, float]]], learners: int, title: str, out: Path) -> None:
    """Each sample's tokens coloured by the learners they ran (mean over layers): the paper's Fig. 6."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: list[list[tuple[str, float, float]]] = [[]]
    for sample in samples:
        x = 0.0
        for token, k in sample:
            width = 0.011 * len(token) + 0.012
            if x + width > 1.0:
                lines.append([])
                x = 0.0
            lines[-1].append((token, k, x))
            x += width
        lines.append([])
    figure, ax = plt.subplots(figsize=(11, 0.3 * len(lines) + 0.6))
    colours = matplotlib.colormaps["viridis"]
    for y, line in enumerate(lines):
        for token, k, x in line:
            ax.text(x, 1 - (y + 0.5) / len(lines), token, fontsize=8, va="center", family="monospace",
                    bbox={"facecolor": colours(k / learners), "alpha": 0.6, "pad": 1, "linewidth": 0})
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    figure.colorbar(matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, learners), colours), ax=ax,
                    fraction=0.02, label="learners run (mean over layers)")
    figure.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(figure)


def plot_front(rows: list[dict[str, Any]], others: list[dict[str, Any]], out: Path) -> None:
    """Macro-F1 against inference FLOPs (all-in): the other methods' bench rows, each trained ACM run, the
    static ladder and the first run's inference-budget curve."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(8, 5.5))
    shapes = iter("*soD^v")
    for method in dict.fromkeys(r["method"] for r in others):
        chosen = [r for r in others if r["method"] == method]
        ax.scatter([r["test_flop_ratio_all_in"] for r in chosen], [r["f1_macro"] for r in chosen], marker=next(shapes),
                   s=120 if method == "full" else 50, label=method, zorder=3)
        for r in chosen:
            ax.annotate(r["config"], (r["test_flop_ratio_all_in"], r["f1_macro"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    trained = [r for r in rows if r["kind"] == "trained"]
    ax.scatter([r["test_flop_ratio_all_in"] for r in trained], [r["f1_macro"] for r in trained], marker="P", s=70,
               color="black", label="acm (trained)", zorder=4)
    for r in trained:
        ax.annotate(r["run"], (r["test_flop_ratio_all_in"], r["f1_macro"]), fontsize=7, xytext=(4, -9),
                    textcoords="offset points")
    for kind, style, label in (("ladder", "x--", "acm static ladder k = 1..N"),
                               ("inference budget", "o-", f"{trained[0]['run']} at --budget R")):
        chosen = sorted((r["test_flop_ratio_all_in"], r["f1_macro"]) for r in rows if r["kind"] == kind)
        if kind == "inference budget":
            chosen = sorted(chosen + [(trained[0]["test_flop_ratio_all_in"], trained[0]["f1_macro"])])
        if chosen:
            ax.plot(*zip(*chosen), style, color="grey", markersize=4, linewidth=1, label=label)
    ax.set_xlabel("inference FLOP ratio vs BL1 (all-in)")
    ax.set_ylabel("test macro-F1 (seed 0)")
    ax.set_title("ACM against the bench's other methods (same data, same FLOP counter)")
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="NAME=RUN_FOLDER, trained ACM runs")
    parser.add_argument("--bl1", type=Path, help="the BL1 run folder (the reference)")
    parser.add_argument("--ladder", type=Path, help="a run whose static ladder (k = 1..N, gates off) to add")
    parser.add_argument("--budgets", type=float, nargs="*", default=[], help="inference FLOP ratios for --ladder's run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=repo_path("bench/results/ag_news/acm"))
    parser.add_argument("--table", type=Path, nargs="?", const=repo_path("bench/results/ag_news/acm"))
    parser.add_argument("--pareto", type=Path, help="a dht bench results.json: draw --output's rows against its "
                        "methods (pareto.png), without evaluating anything")
    args = parser.parse_args()
    if args.pareto:
        written = json.loads((args.output / "summary.json").read_text(encoding="utf-8"))["result"]
        others = json.loads(args.pareto.read_text(encoding="utf-8"))
        others = others["result"] if isinstance(others, dict) else others
        plot_front(written, others, args.output / "pareto.png")
        return
    if args.table:
        written = json.loads((args.table / "summary.json").read_text(encoding="utf-8"))["result"]
        print(table(written, json.loads((args.table / "bl1.json").read_text(encoding="utf-8"))["test"]))
        return
    if args.bl1 is None or not args.runs:
        parser.error("give --bl1 RUN and NAME=RUN pairs")
    entries: list[tuple[str, str, Path, dict[str, Any] | None, float | None]] = [
        (pair.split("=", 1)[0], "trained", Path(pair.split("=", 1)[1]), None, None) for pair in args.runs]
    if args.ladder:
        learners = json.loads((args.ladder / "run.json").read_text(encoding="utf-8"))["run"]["options"]["learners"]
        entries += [(f"k={k}", "ladder", args.ladder, {"acm_k": k}, None) for k in range(1, learners + 1)]
        entries += [(f"R={r}", "inference budget", args.ladder, None, r) for r in args.budgets]
    prepared = [load_run(args.bl1)] + [load_run(folder, overrides=overrides) for _, _, folder, overrides, _ in entries]
    found = [None] + [budget_search(p, r) if r is not None else None for p, (*_, r) in zip(prepared[1:], entries)]
    tests, seconds = time_inference(prepared, args.rounds)
    rows = [row(name, kind, folder, p, test, wall / seconds[0], f)
            for (name, kind, folder, _, _), p, test, wall, f in zip(entries, prepared[1:], tests[1:], seconds[1:],
                                                                     found[1:])]
    args.output.mkdir(parents=True, exist_ok=True)
    for name, kind, folder, _, _ in entries:
        if kind == "trained":
            (args.output / f"{name}.json").write_text((folder / "metrics.json").read_text(encoding="utf-8"),
                                                     encoding="utf-8")
    bl1 = json.loads((args.bl1 / "metrics.json").read_text(encoding="utf-8"))
    bl1["test"] = {**bl1["test"], **tests[0], "seconds_round_robin": seconds[0]}
    (args.output / "bl1.json").write_text(json.dumps(bl1, indent=1), encoding="utf-8")
    write_result(args.output / "summary.json", rows, prepared[0].method.device)
    (args.output / "table.md").write_text(table(rows, bl1["test"]), encoding="utf-8")
    plot_histograms(rows, args.output / "histograms.png")
    first = prepared[1]  # the first trained run: where its compute went, token by token
    samples = token_costs(first)
    ranked = sorted((k, token) for sample in samples for token, k in sample)
    tokens = {"run": entries[0][0], "samples": samples, "cheapest": ranked[:20], "costliest": ranked[-20:][::-1]}
    (args.output / f"tokens-{entries[0][0]}.json").write_text(json.dumps(tokens, indent=1), encoding="utf-8")
    plot_tokens(samples, first.method.options.learners, f"{entries[0][0]}: learners run per token",
                args.output / f"tokens-{entries[0][0]}.png")
    print(table(rows, bl1["test"]))


if __name__ == "__main__":
    main()
