"""The bench's two Pareto plots: macro-F1 against inference FLOPs and against training FLOPs (all-in).

Every bench row is a marker (its mean over seeds), BL1 a star. On the inference plot a run with a knob
is also a line through its operating points (FastBERT's speeds, DHT's cost weights; means over seeds)
and its oracle routers are hollow markers (a circle: the cheapest correct route, a square: the cheapest
route agreeing with full depth; the colour is the method's). The F1 axis starts 0.03 below the lowest
row, so a curve that falls far below every row (P-DHT's at large cost weights) is cut rather than
squeezing the rest. The training plot counts a distilled run's teacher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dht.benchmark.front import ORACLES, curve_means
from dht.training.hooks import METHODS

TEACHER = "full"


def _axes(title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.set_title(title)
    ax.set_ylabel("test macro-F1 (mean over seeds)")
    return plt, fig, ax


def _markers(ax: Any, front: list[dict[str, Any]], x_key: str) -> dict[str, str]:
    """One marker per registered method, BL1 a star; returns each method's colour."""
    shapes, colours = iter("soD^vP<>Xph"), {}
    for method in METHODS:
        chosen = [r for r in front if r["method"] == method]
        if not chosen:
            continue
        marker = "*" if method == TEACHER else next(shapes)
        drawn = ax.scatter([r[x_key] for r in chosen], [r["f1_macro_mean"] for r in chosen], marker=marker,
                           s=160 if method == TEACHER else 60, label=method, zorder=3)
        colours[method] = drawn.get_facecolor()[0]
        for r in chosen:
            ax.annotate(r["config"], (r[x_key], r["f1_macro_mean"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    return colours


ORACLE_STYLE = dict(zip(ORACLES, (("o", "oracle: cheapest correct route"),
                                  ("s", "oracle: agrees with full depth"))))  # marker, legend entry


def plot_inference_front(front: list[dict[str, Any]], points: list[dict[str, Any]], out: Path) -> None:
    """Macro-F1 against inference FLOPs (all-in): rows, knob curves and oracle routers."""
    plt, fig, ax = _axes("Accuracy against inference cost")
    colours = _markers(ax, front, "test_flop_ratio_all_in_mean")
    labelled = set()
    for (method, _, kind), values in curve_means(points).items():
        colour = colours.get(method)
        xs, ys = [v[1] for v in values], [v[2] for v in values]
        if kind == "knob":
            ax.plot(xs, ys, "-", color=colour, alpha=0.6, linewidth=1)
        elif kind in ORACLE_STYLE:  # one legend entry per oracle kind, not a label per run
            marker, name = ORACLE_STYLE[kind]
            ax.scatter(xs, ys, marker=marker, facecolors="none", edgecolors=[colour], s=50, zorder=2,
                       label=None if kind in labelled else name)
            labelled.add(kind)
    if front:
        ax.set_ylim(bottom=min(r["f1_macro_mean"] for r in front) - 0.03)
    ax.set_xlabel("inference FLOP ratio vs BL1 (all-in); lines: a run's knob, hollow: its oracle routers")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_training_front(front: list[dict[str, Any]], out: Path) -> None:
    """Macro-F1 against training FLOPs (all-in, a distilled run's teacher included)."""
    plt, fig, ax = _axes("Accuracy against training cost")
    _markers(ax, front, "train_flop_ratio_with_teacher_mean")
    ax.set_xlabel("training FLOP ratio vs BL1 (all-in, with the teacher's training)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
