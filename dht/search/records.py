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


def windows(records: list[dict[str, Any]], key, count: int = 40) -> tuple[list[float], dict[Any, list[float]]]:
    """Share of each value of key(record) in ``count`` consecutive windows of training."""
    size = max(1, len(records) // count)
    values = sorted({key(r) for r in records})
    xs, series = [], {v: [] for v in values}
    for start in range(0, len(records), size):
        chunk = records[start:start + size]
        counts = Counter(key(r) for r in chunk)
        xs.append(chunk[-1]["step"])
        for v in values:
            series[v].append(counts[v] / len(chunk))
    return xs, series


def plot_selection(records: list[dict[str, Any]], num_heads: int, out: Path) -> None:
    """Share of each depth and each head count over training (paper Figure 2)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], lambda r: r["depth"], "layers (depth L)"),
                           (axes[1], lambda r: head_count(r, num_heads), "heads per dynamic layer (H)")):
        xs, series = windows(records, key)
        for value, ys in series.items():
            ax.plot(xs, ys, label=str(value))
        ax.set_xlabel("training step")
        ax.set_ylabel("share of samples")
        ax.set_ylim(0, 1)
        ax.set_title(f"Selected {title}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_heads(records: list[dict[str, Any]], num_heads: int, out: Path) -> None:
    """How often each head is kept, per group of layers (when the group ran)."""
    kept: dict[int, Counter] = defaultdict(Counter)
    ran: Counter = Counter()
    for record in records:
        for group, heads in enumerate(record["heads"]):
            ran[group] += 1
            kept[group].update(heads)
    groups = sorted(ran)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * max(1, len(groups))))
    matrix = [[kept[g][h] / ran[g] for h in range(num_heads)] for g in groups] or [[0.0] * num_heads]
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
