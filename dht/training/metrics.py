"""Classification scores."""

from __future__ import annotations

import re

import torch
from torch import Tensor


def accuracy(predictions: Tensor, labels: Tensor) -> float:
    """Share of predictions (N,) equal to labels (N,)."""
    return float((predictions == labels).float().mean())


def f1_macro(predictions: Tensor, labels: Tensor, num_classes: int) -> float:
    """Unweighted mean over classes of F1 = 2·TP / (2·TP + FP + FN); a class never seen nor predicted scores 0."""
    classes = torch.arange(num_classes)
    predicted = predictions[:, None] == classes  # (N, C)
    actual = labels[:, None] == classes
    tp = (predicted & actual).sum(0).float()
    denominator = predicted.sum(0).float() + actual.sum(0).float()  # 2TP + FP + FN
    return float((2 * tp / denominator.clamp_min(1)).mean())


def route_scores(routes: list[str], predictions: Tensor, labels: Tensor) -> dict[str, dict[str, float]]:
    """Per path taken at inference (DHT's arm, FastBERT's exit): its share of the samples and their accuracy,
    shallowest first. Says whether the cheap paths got the easy samples."""
    hits: dict[str, list[bool]] = {}  # route -> whether each of its samples was right
    for route, ok in zip(routes, (predictions == labels).tolist()):
        hits.setdefault(route, []).append(ok)
    return {route: {"share": round(len(hits[route]) / len(routes), 4),
                    "accuracy": round(sum(hits[route]) / len(hits[route]), 4)}
            for route in sorted(hits, key=lambda r: [int(n) for n in re.findall(r"\d+", r)])}
