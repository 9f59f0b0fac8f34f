"""The loss plot of a run folder, generated from its log.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over at most ``window`` values."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_loss(log_path: Path, out_path: Path) -> None:
    """Training loss per step (raw and smoothed), with epoch boundaries (paper Figure 3)."""
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    steps = [r["step"] for r in records]
    losses = [r["loss"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss per step")
    ax.plot(steps, moving_average(losses, max(1, len(losses) // 50)), color="tab:blue", label="moving average")
    for previous, current in zip(records, records[1:]):
        if current["epoch"] != previous["epoch"]:
            ax.axvline(current["step"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(f"Training loss ({out_path.parent.name})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
