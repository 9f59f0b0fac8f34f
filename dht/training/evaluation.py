"""Prediction over a whole split, and its scores: what ``dht evaluate`` and the end of training report.

Dimension legend: N samples of the split, C classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor
from tqdm import tqdm

from dht.data import Batch, iterate_batches
from dht.training.hooks import Method, NonFiniteError, Prediction
from dht.training.metrics import accuracy, confusion, f1_macro, route_scores

PredictBatches = Callable[[Iterable[Batch]], Iterator[tuple[Batch, Prediction]]]


@dataclass
class SplitPrediction:
    """A method's predictions for every sample of a split, in the split's order, and what they cost."""

    predictions: Tensor  # (N,) long: predicted class
    probabilities: Tensor  # (N, C) float32: softmax of the logits
    flops: Tensor  # (N,) float64: FLOPs of the network that ran (paper-style)
    full_flops: Tensor  # (N,) float64: the full model's FLOPs on the same tokens
    all_in: Tensor  # (N,) float64: plus overheads (probes, bandits)
    routes: list[str]  # per sample, the path it took ("" for methods with one path)
    totals: tuple[float, float, float]  # flops, full, all-in summed batch by batch (as reported)
    seconds: float  # wall time of the whole prediction


@torch.no_grad()
def predict_split(method: Method, ids: list[list[int]], labels: list[int], batch_size: int, pad_id: int,
                  progress: bool = False, predict_batches: PredictBatches | None = None,
                  desc: str = "evaluate") -> SplitPrediction:
    """Predict every sample (batches sorted by length; DHT regroups them by depth) with
    ``predict_batches`` (default: the method's own); ``labels`` may be dummies (prediction reads none);
    seconds are wall time; ``desc`` names the progress bar."""
    method.model.eval()
    predict_batches = predict_batches or method.predict_batches
    N = len(ids)
    predictions = torch.empty(N, dtype=torch.long)
    probabilities = torch.empty(N, method.model.config.num_classes)
    flops, full, all_in = (torch.zeros(N, dtype=torch.float64) for _ in range(3))
    routes: list[str] = [""] * N
    totals = [0.0, 0.0, 0.0]
    started = time.perf_counter()
    batches = iterate_batches(ids, labels, batch_size, pad_id, shuffle=False, sort_by_length=True)
    batches = (batch.to(method.device) for batch in batches)
    with tqdm(total=N, unit="sample", desc=desc, disable=not progress, mininterval=1.0,
              dynamic_ncols=True) as bar:
        for batch, result in predict_batches(batches):
            bar.update(len(batch))
            if not torch.isfinite(result.logits).all():  # a diverged model: its scores would mean nothing
                raise NonFiniteError("the model's outputs are not finite (its weights have diverged)")
            index = batch.index.cpu()
            predictions[index] = result.logits.argmax(-1).cpu()
            probabilities[index] = result.logits.float().softmax(-1).cpu()
            for per_sample, value in ((flops, result.flops), (full, result.full_flops), (all_in, result.all_in)):
                per_sample[index] = value.cpu().double()
            for i, value in enumerate((result.flops, result.full_flops, result.all_in)):
                totals[i] += float(value.sum())
            for row, route in zip(index.tolist(), result.routes or ()):
                routes[row] = route
    return SplitPrediction(predictions, probabilities, flops, full, all_in, routes, tuple(totals),
                           time.perf_counter() - started)


def split_scores(result: SplitPrediction, labels: list[int], num_classes: int) -> dict[str, Any]:
    """Accuracy, macro-F1, FLOP ratios (paper-style and all-in) and seconds of a split's prediction, with
    each route's share and accuracy for methods whose samples take different paths."""
    truth = torch.tensor(labels)
    flops, full, all_in = result.totals
    scores = {"accuracy": accuracy(result.predictions, truth),
              "f1_macro": f1_macro(result.predictions, truth, num_classes),
              "flop_ratio": flops / full, "flop_ratio_all_in": all_in / full, "seconds": result.seconds,
              "samples": len(labels), "confusion_matrix": confusion(result.predictions, truth, num_classes)}
    missing = [c for c in range(num_classes) if c not in set(labels)]
    if missing:  # macro-F1 then averages fewer classes (metrics.py); say which
        scores["classes_absent_from_test"] = missing
    if any(result.routes):
        scores["routes"] = route_scores(result.routes, result.predictions, truth)
    return scores
