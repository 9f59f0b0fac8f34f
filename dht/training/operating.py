"""Operating points of a trained run: a knob found for a FLOP budget, and the routing limit (oracles).

``budget_search`` finds the value of a run's knob (``Method.knob_for``: DHT's cost weight, or its
continuation threshold when the cost weight starts every sample on the cheapest arm; FastBERT's speed) at
which its inference FLOP ratio (all-in) on a seeded sample of *training* rows meets a target, by bisection:
the ratio falls weakly as the knob moves from its dearest to its cheapest end, so each step halves the
interval that holds the target. The test split is not looked at while searching. A run trained with
``--holdout N`` is searched on those N held-out rows instead: on rows it has fitted a network is surer
than on new ones, so its routes there are cheaper than on the test split (docs/front.md). The ratio is
the one of traffic in which every class is equally frequent (``class_balanced_ratio``): samples of one
class take dearer routes than another's (Business 2.3x World on an F-DHT run at λ = 0), and a training
split's class mix is not the traffic's (the embedded AG News trains on 36% Sci/Tech and 15% Sports, and
tests on 25% of each), so the plain mean over training rows missed the test split's ratio by up to 0.03
(docs/front.md, "Class-balanced search rows").

``oracle_scores`` asks what any router could do with a run's network: every sample tries every fixed
route (DHT's arms with greedy heads, FastBERT's exits), and the oracle takes, per sample, the cheapest
route whose prediction is correct (the limit of routing on this network) or the cheapest that agrees
with the full model's prediction (all layers, all heads). Its FLOPs are the chosen routes' networks
(paper-style): an oracle's own choice is free by definition.

Dimension legend: N samples, R routes.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import torch
from torch import Tensor

from dht.training.evaluation import SplitPrediction, predict_split, split_scores
from dht.training.hooks import Method, plan_prediction
from dht.training.metrics import accuracy, f1_macro
from dht.training.setup import Prepared

CALIBRATION_SAMPLE_ROWS = 512  # seeded training rows a method calibrates on by default (ACM's gates)
SEARCH_ROWS = 2048  # training rows --budget searches on: a standard error of about 0.005 in the FLOP ratio


def bisect_knob(ratio_at: Callable[[float], float], target: float, dearest: float, cheapest: float,
                tolerance: float, steps: int) -> tuple[float, float, list[tuple[float, float]]]:
    """The knob value in [dearest, cheapest] whose ratio is closest to ``target`` among those tried.

    ``ratio_at`` must fall weakly from ``dearest`` to ``cheapest``. Stops once a ratio is within
    ``tolerance`` of the target or after ``steps`` halvings; returns (value, its ratio, every (value,
    ratio) tried). A target outside [ratio(cheapest), ratio(dearest)] returns the nearer end."""
    tried = [(dearest, ratio_at(dearest)), (cheapest, ratio_at(cheapest))]
    low, high = dearest, cheapest  # ratio(low) >= target >= ratio(high) while the target is inside
    if tried[0][1] > target > tried[1][1]:
        for _ in range(steps):
            middle = (low + high) / 2
            ratio = ratio_at(middle)
            tried.append((middle, ratio))
            if abs(ratio - target) <= tolerance:
                break
            low, high = (middle, high) if ratio > target else (low, middle)
    value, ratio = min(tried, key=lambda pair: abs(pair[1] - target))
    return value, ratio, tried


def check_operating(method: type[Method], overrides: dict[str, Any] | None, budget: float | None,
                    oracle: bool, options: dict[str, Any] | None = None) -> None:
    """Refuse, before anything is loaded, a budget for a run without a knob or together with the
    knob's own flag, a budget outside (0, 1.5], and oracles for a method with one route. ``options``:
    the run's own (run.json), which with ``overrides`` decide its knob (``Method.knob_for``)."""
    if budget is not None:
        knob = method.knob_for({**(options or {}), **(overrides or {})})
        if knob is None:
            raise ValueError(f"--budget: method {method.name} has no knob that trades accuracy for cost")
        if knob.option in (overrides or {}):
            flag = "--" + knob.option.replace("_", "-")
            raise ValueError(f"--budget sets {flag} itself: give one of them, not both")
        if not 0 < budget <= 1.5:
            raise ValueError(f"--budget must be in (0, 1.5], got {budget}")
    if oracle and method.predict_route_batches is Method.predict_route_batches:
        raise ValueError(f"--oracle: method {method.name} has one route, nothing to choose")


def seeded_rows(ids: list[list[int]], labels: list[int], seed: int,
                rows: int = CALIBRATION_SAMPLE_ROWS) -> tuple[list[list[int]], list[int]]:
    """``rows`` training rows (all if fewer) drawn with ``seed``, in their split's order: where a knob is
    set (``budget_search``, ACM's calibration) without looking at the test split."""
    chosen = sorted(random.Random(seed).sample(range(len(ids)), min(rows, len(ids))))
    return [ids[i] for i in chosen], [labels[i] for i in chosen]


def class_balanced_ratio(prediction: SplitPrediction, labels: list[int]) -> float:
    """All-in FLOPs over the full model's, each class's samples weighted by 1 / (its count): the ratio a
    traffic in which every class present is equally frequent would have. Shapes: ``labels`` (N,)."""
    y = torch.tensor(labels)
    weights = 1.0 / torch.bincount(y).double()[y]  # (N,)
    return float((weights * prediction.all_in).sum() / (weights * prediction.full_flops).sum())


def budget_search(prepared: Prepared, target: float, rows: int = SEARCH_ROWS, tolerance: float = 0.005,
                  steps: int = 20) -> dict[str, Any]:
    """Set the method's knob so its all-in inference FLOP ratio on ``rows`` seeded training rows (held-out
    rows when the run kept some), every class weighted equally (``class_balanced_ratio``), is ``target``;
    return what was found. Raises ValueError for a method without a knob or a target outside (0, 1.5]."""
    method = prepared.method
    check_operating(type(method), None, target, False, method.options.to_dict())
    knob = method.active_knob
    held = prepared.holdout is not None and len(prepared.holdout) > 0
    train = prepared.holdout if held else prepared.train  # rows the network has not fitted, when the run kept some
    if not len(train):
        raise ValueError(f"--budget sets the knob on training rows, and {prepared.dataset.train.path} is missing")
    ids, labels = seeded_rows(train.ids, train.labels, prepared.run.train.seed, rows)
    batch_size = prepared.run.train.eval_batch_size

    def ratio_at(value: float) -> float:
        method.set_inference_options(**{knob.option: value})
        return class_balanced_ratio(predict_split(method, ids, labels, batch_size, prepared.pad_id), labels)

    value, ratio, tried = bisect_knob(ratio_at, target, knob.dearest, knob.cheapest, tolerance, steps)
    method.set_inference_options(**{knob.option: value})
    return {"target": target, "option": knob.option, "value": value, "train_rows": len(ids),
            "rows": "holdout" if held else "train",
            "train_flop_ratio_all_in": ratio, "evaluations": len(tried),
            "reachable": [tried[1][1], tried[0][1]]}  # the ratios at the cheapest and the dearest end


def route_predictions(prepared: Prepared, route: str | None) -> SplitPrediction:
    """The test split with every sample on ``route``; None: the full model (all layers, all heads)."""
    method, split = prepared.method, prepared.test
    if route is None:
        full = method.model.full_plan()
        predict = lambda batches: ((batch, plan_prediction(method.model, batch, full)) for batch in batches)
    else:
        predict = lambda batches: method.predict_route_batches(batches, route)
    return predict_split(method, split.ids, split.labels, prepared.run.train.eval_batch_size, prepared.pad_id,
                         predict_batches=predict)


def oracle_scores(prepared: Prepared) -> dict[str, Any]:
    """The two oracle routers on the test split: the cheapest correct route per sample, and the cheapest
    route agreeing with the full model. Raises ValueError for a method with one route."""
    method, split = prepared.method, prepared.test
    routes = method.fixed_routes()
    if not routes:
        raise ValueError(f"--oracle: method {method.name} has one route, nothing to choose")
    per_route = [route_predictions(prepared, route) for route in routes]
    reference = route_predictions(prepared, None).predictions  # (N,)
    labels = torch.tensor(split.labels)
    predictions = torch.stack([r.predictions for r in per_route])  # (R, N)
    flops = torch.stack([r.flops for r in per_route])  # (R, N) float64
    full = per_route[0].full_flops  # (N,)
    out = {"routes": {route: split_scores(r, split.labels, prepared.dataset.num_classes) | {"route": route}
                      for route, r in zip(routes, per_route)}}
    for name, good in (("oracle_correct", predictions == labels),
                       ("oracle_agrees_with_full", predictions == reference)):
        pick = cheapest_good_route(flops, good)  # (N,)
        chosen = predictions.gather(0, pick[None]).squeeze(0)
        spent = flops.gather(0, pick[None]).squeeze(0)
        out[name] = {"accuracy": accuracy(chosen, labels), "f1_macro": f1_macro(chosen, labels,
                                                                                prepared.dataset.num_classes),
                     "flop_ratio": float(spent.sum() / full.sum()),
                     "shares": {route: round(float((pick == r).float().mean()), 4) for r, route in enumerate(routes)}}
    return out


def cheapest_good_route(flops: Tensor, good: Tensor) -> Tensor:
    """Per sample, the route with the fewest FLOPs among those where ``good``; where no route is good,
    the cheapest route. flops (R, N) float, good (R, N) bool -> (N,) long; ties go to the lower index."""
    cost = flops.masked_fill(~good, float("inf"))
    return torch.where(good.any(0), cost.argmin(0), flops.argmin(0))
