"""Inference FLOPs per class: why a knob set on training rows lands elsewhere on the test split.

Evaluates a saved run on its test split (with inference options, e.g. the cost weight a budget search
found) and writes each class's mean all-in inference FLOP ratio, the test split's ratio, and that ratio
reweighted to the training split's class mix: the part of a train/test gap that the class mix explains.
``--train-rows N`` also evaluates N seeded training rows (as ``--budget`` draws them) and writes their
ratio per class, their plain ratio and their class-balanced one (``class_balanced_ratio``, what
``--budget`` searches on): whether training and test rows of one class cost the same.

Usage: python bench/cost_by_class.py RUN [--cost-weight L] [--train-rows N] [--output PATH]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch

import dht.methods  # noqa: F401  (registers the methods)
from dht.data import read_dataset
from dht.provenance import repo_path, write_result
from dht.training.evaluation import SplitPrediction, predict_split
from dht.training.loop import load_run
from dht.training.operating import class_balanced_ratio, seeded_rows
from dht.training.setup import dataset_dir


def ratio_by_class(prediction: SplitPrediction, labels: list[int], classes: int) -> list[float]:
    """Each class's mean per-sample all-in FLOP ratio (a sample's all-in FLOPs over the full model's)."""
    ratio, y = prediction.all_in / prediction.full_flops, torch.tensor(labels)
    return [float(ratio[y == k].mean()) for k in range(classes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--cost-weight", type=float, default=None, help="DHT's inference knob (default: the run's)")
    parser.add_argument("--train-rows", type=int, default=0, help="also this many seeded training rows")
    parser.add_argument("--output", type=Path, default=repo_path("bench/results/ag_news/cost_by_class.json"))
    args = parser.parse_args()
    overrides = {} if args.cost_weight is None else {"cost_weight": args.cost_weight}
    prepared = load_run(args.run, overrides=overrides)
    test = prepared.test
    result = predict_split(prepared.method, test.ids, test.labels, prepared.run.train.eval_batch_size, prepared.pad_id)
    labels = torch.tensor(test.labels)
    classes = prepared.dataset.classes
    per_class = ratio_by_class(result, test.labels, len(classes))
    train_counts = Counter(read_dataset(dataset_dir(prepared.run)).train.labels)
    train_prior = [train_counts[k] / sum(train_counts.values()) for k in range(len(classes))]
    test_prior = [float((labels == k).double().mean()) for k in range(len(classes))]
    out = {"run": str(args.run), "options": overrides, "classes": list(classes),
           "test_ratio_by_class": per_class, "test_class_share": test_prior, "train_class_share": train_prior,
           "test_ratio": float(result.all_in.sum() / result.full_flops.sum()),
           "test_ratio_per_sample_mean": float((result.all_in / result.full_flops).mean()),
           "test_ratio_reweighted_to_train_mix": sum(r * w for r, w in zip(per_class, train_prior))}
    if args.train_rows:
        ids, rows_labels = seeded_rows(prepared.train.ids, prepared.train.labels, prepared.run.train.seed,
                                       args.train_rows)
        rows = predict_split(prepared.method, ids, rows_labels, prepared.run.train.eval_batch_size, prepared.pad_id)
        out["train_rows"] = {"rows": len(ids), "ratio": float(rows.all_in.sum() / rows.full_flops.sum()),
                             "class_balanced_ratio": class_balanced_ratio(rows, rows_labels),
                             "ratio_by_class": ratio_by_class(rows, rows_labels, len(classes))}
        print(f"{len(ids)} training rows: ratio {out['train_rows']['ratio']:.3f}, class-balanced "
              f"{out['train_rows']['class_balanced_ratio']:.3f}; by class "
              + ", ".join(f"{r:.3f}" for r in out["train_rows"]["ratio_by_class"]))
    write_result(args.output, out, prepared.method.device)
    for name, r, a, b in zip(classes, per_class, test_prior, train_prior):
        print(f"{name:10} ratio {r:.3f}  share test {a:.2f} train {b:.2f}")
    print(f"test {out['test_ratio']:.3f}; per-sample mean reweighted to the training mix "
          f"{out['test_ratio_reweighted_to_train_mix']:.3f} (unweighted {out['test_ratio_per_sample_mean']:.3f})")


if __name__ == "__main__":
    main()
