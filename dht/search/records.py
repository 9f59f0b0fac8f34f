"""What the bandits chose: the metrics' selection block and the plots, from decisions.jsonl."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_decisions(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def head_count(record: dict[str, Any], num_heads: int) -> int:
    """Heads kept per dynamic layer, averaged over the sample's groups (all heads if it had none)."""
    groups = record["heads"]
    return round(sum(len(g) for g in groups) / len(groups)) if groups else num_heads


def shares(values: list) -> dict[str, float]:
    counts = Counter(values)
    return {str(k): round(v / len(values), 4) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}


def selection_summary(records: list[dict[str, Any]], num_heads: int) -> dict[str, Any]:
    """Share of each arm, depth and head count, per epoch."""
    by_epoch: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_epoch[record["epoch"]].append(record)
    return {
        "arms": [shares([r["arm"] for r in by_epoch[e]]) for e in sorted(by_epoch)],
        "depth": [shares([r["depth"] for r in by_epoch[e]]) for e in sorted(by_epoch)],
        "heads": [shares([head_count(r, num_heads) for r in by_epoch[e]]) for e in sorted(by_epoch)],
    }


def windows(records: list[dict[str, Any]], key, max_windows: int = 30,
            min_steps: int = 10) -> tuple[list[float], dict[Any, list[float]]]:
    """Share of each value of key(record) per window of training steps.

    A released queue holds one depth, so a window spans at least ``min_steps`` steps (many queues)
    to show shares rather than single batches.
    """
    steps = sorted({r["step"] for r in records})
    count = max(1, min(max_windows, len(steps) // min_steps))
    edges = [steps[min(len(steps) - 1, (i + 1) * len(steps) // count - 1)] for i in range(count)]
    values = sorted({key(r) for r in records})
    xs, series = [], {v: [] for v in values}
    start = 0
    ordered = sorted(records, key=lambda r: r["step"])
    for edge in edges:
        chunk = []
        while start < len(ordered) and ordered[start]["step"] <= edge:
            chunk.append(ordered[start])
            start += 1
        if not chunk:
            continue
        counts = Counter(key(r) for r in chunk)
        xs.append(edge)
        for v in values:
            series[v].append(counts[v] / len(chunk))
    return xs, series


def plot_selection(records: list[dict[str, Any]], num_heads: int, out: Path) -> None:
    """Share of each depth and each head count over training (paper Figure 2), as stacked areas."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], lambda r: r["depth"], "layers (depth L)"),
                           (axes[1], lambda r: head_count(r, num_heads), "heads per dynamic layer (H)")):
        draw_shares(ax, *windows(records, key))
        ax.set_title(f"Selected {title}")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def draw_shares(ax: Any, xs: list[float], series: dict[Any, list[float]]) -> None:
    """Each value's share per window as stacked areas; a run of one window (fewer than twice
    ``windows``' min_steps) as one stacked bar, since an area over one step draws nothing."""
    if len(xs) > 1:
        ax.stackplot(xs, *series.values(), labels=[str(v) for v in series], alpha=0.85)
        ax.set_xlim(xs[0], xs[-1])
    else:
        bottom = 0.0
        for value, shares in series.items():
            ax.bar(xs, shares, bottom=bottom, width=0.8, label=str(value), alpha=0.85)
            bottom += shares[0] if shares else 0.0
    ax.set_xlabel("training step")
    ax.set_ylabel("share of samples")
    ax.set_ylim(0, 1)


def kept_shares(records: list[dict[str, Any]], num_heads: int) -> tuple[list[int], list[list[float]]]:
    """The groups that ran, and per group the share of its samples that kept each head (groups × N_h)."""
    kept: dict[int, Counter] = defaultdict(Counter)
    ran: Counter = Counter()
    for record in records:
        for group, heads in enumerate(record["heads"]):
            ran[group] += 1
            kept[group].update(heads)
    groups = sorted(ran)
    return groups, [[kept[g][h] / ran[g] for h in range(num_heads)] for g in groups]


def plot_heads(records: list[dict[str, Any]], num_heads: int, out: Path) -> None:
    """How often each head is kept, per group of layers (when the group ran)."""
    groups, matrix = kept_shares(records, num_heads)
    matrix = matrix or [[0.0] * num_heads]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * max(1, len(groups))))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(num_heads))
    ax.set_yticks(range(len(matrix)), [f"group {g}" for g in groups] or ["none"])
    ax.set_xlabel("head")
    ax.set_title("Share of samples keeping each head (TSB)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def write_selection_report(output: Path, num_heads: int) -> dict[str, Any]:
    """Write selection.png and heads.png; return the metrics' selection block."""
    records = read_decisions(output / "decisions.jsonl")
    if not records:
        return {}
    plot_selection(records, num_heads, output / "selection.png")
    plot_heads(records, num_heads, output / "heads.png")
    return {"selection": selection_summary(records, num_heads)}
