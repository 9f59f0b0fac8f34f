"""Classification scores."""

from __future__ import annotations

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
