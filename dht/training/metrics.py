"""Classification scores, from scikit-learn (the metrics are not what this project exists for).

Macro-F1 is the unweighted mean of the per-class F1 over the classes that occur in the test labels or the
predictions (scikit-learn's convention): a class absent from both says nothing about the classifier and
is left out rather than scored 0, with a ``MetricsWarning`` naming it.
"""

from __future__ import annotations

import re
import warnings

from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from torch import Tensor


class MetricsWarning(UserWarning):
    """A score that needs a caveat (a class absent from the test split)."""


def accuracy(predictions: Tensor, labels: Tensor) -> float:
    """Share of predictions (N,) equal to labels (N,)."""
    return float(accuracy_score(labels.numpy(), predictions.numpy()))


def f1_macro(predictions: Tensor, labels: Tensor, num_classes: int) -> float:
    """Macro-F1 of predictions (N,) against labels (N,), classes 0..num_classes-1 (module docstring)."""
    absent = absent_classes(predictions, labels, num_classes)
    if absent:
        warnings.warn(f"classes {absent} occur neither in the test labels nor in the predictions; macro-F1 "
                      f"averages the other {num_classes - len(absent)}", MetricsWarning, stacklevel=2)
    return float(f1_score(labels.numpy(), predictions.numpy(), average="macro", zero_division=0))


def absent_classes(predictions: Tensor, labels: Tensor, num_classes: int) -> list[int]:
    """Classes that occur neither in the labels nor in the predictions."""
    seen = set(labels.tolist()) | set(predictions.tolist())
    return [c for c in range(num_classes) if c not in seen]


def confusion(predictions: Tensor, labels: Tensor, num_classes: int) -> list[list[int]]:
    """The C x C confusion matrix: row = true class, column = predicted class."""
    return confusion_matrix(labels.numpy(), predictions.numpy(), labels=list(range(num_classes))).tolist()


def route_scores(routes: list[str], predictions: Tensor, labels: Tensor) -> dict[str, dict[str, float]]:
    """Per path taken at inference (DHT's arm, FastBERT's exit): its share of the samples and their accuracy,
    shallowest first. Says whether the cheap paths got the easy samples."""
    hits: dict[str, list[bool]] = {}  # route -> whether each of its samples was right
    for route, ok in zip(routes, (predictions == labels).tolist()):
        hits.setdefault(route, []).append(ok)
    return {route: {"share": round(len(hits[route]) / len(routes), 4),
                    "accuracy": round(sum(hits[route]) / len(hits[route]), 4)}
            for route in sorted(hits, key=lambda r: [int(n) for n in re.findall(r"\d+", r)])}
