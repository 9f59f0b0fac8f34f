"""Training seconds against training FLOPs: does a method's FLOP saving in training show in seconds?

Two finished runs, the reference (BL1) and another (a DHT preset), are loaded in one process and train on
from their saved weights and method state, on the same loader batches (epoch 0's order, seeded), one
training step to each in turn, round-robin, so the machine's noise falls on both alike. Each side's clock
covers what the training loop's does: the method's work between steps (DHT's S1 probes, bandit choices
and queueing), the step (DHT's S2, rewards and bandit updates), backward, clipping and the optimizer
step. The arm features of the epoch start are computed before the clock starts (the run's metrics.json
counts their FLOPs, not this bench). The first ``--warmup`` steps of each side are not timed. Ratios are
per trained sample, until BL1's batches run out: the other side has twice as many, so DHT's queues never
reach the end of their data (where partial queues are flushed) while the clock runs. Written: each
side's seconds and FLOPs (paper-style and all-in), and the wall-time ratio beside the all-in FLOP ratio.

A DHT run trained with ``--full-depth-warmup W`` has two kinds of steps: W of its samples train the whole
network, the rest are routed through the frozen encoder (dht/methods/dht_warmup.py). The finished run
trains on as routed steps; a third side, the same run's settings freshly prepared, takes warm-up steps on
BL1's batches in the same round-robin. The run's ratios are then W x the warm-up side's + (1 - W) x the
routed side's, per sample (``phases``).

Usage: python bench/train_wall.py REFERENCE_RUN RUN [--batches 120] [--warmup 10]
       [--output bench/results/ag_news/train_wall.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

import dht.methods  # noqa: F401  (registers the methods)
from dht.data import iterate_batches
from dht.provenance import repo_path, synchronise, write_result
from dht.training.loop import load_run, make_optimizer
from dht.training.setup import Prepared, prepare


class Side:
    """One run training on: its optimizer, its method's stream of steps, its clock and counters."""

    def __init__(self, prepared: Prepared, batches: list) -> None:
        self.prepared, self.method, self.model = prepared, prepared.method, prepared.model
        self.optimizer = make_optimizer(prepared)
        for group in self.optimizer.param_groups:
            group["lr"] = prepared.run.train.lr * 0.1  # a late-schedule rate: the runs are trained already
        self.method.bind_optimizer(self.optimizer)
        train = prepared.train
        self.method.on_train_start(train.ids, train.labels, prepared.pad_id, total_steps=10**6)
        self.method.on_epoch_start(0, train.ids, prepared.pad_id)
        self.model.train()
        self.steps = self.method.training_batches(iter(batches))
        self.seconds = self.flops = self.all_in = self.full = 0.0
        self.samples = self.count = 0

    def sync(self) -> None:
        synchronise(self.method.device)  # the clock must see the step's kernels finish

    def step(self, counted: bool) -> bool:
        """One training step as the loop takes it, the clock from the last step's end (it covers the
        method's work between steps: DHT's probes and queueing); False when the batches ran out."""
        self.sync()
        start = time.perf_counter()
        released = next(self.steps, None)
        if released is None:
            return False
        result = self.method.training_step(released)
        self.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        self.method.after_backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.prepared.run.train.max_grad_norm)
        result.loss.item()
        self.optimizer.step()
        self.sync()
        if counted:
            self.seconds += time.perf_counter() - start
            self.flops, self.all_in = self.flops + result.flops, self.all_in + result.all_in
            self.full += result.full_flops
            self.samples += len(released)
        self.count += 1
        return True

    def report(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "samples": self.samples, "flop_ratio": self.flops / self.full,
                "flop_ratio_all_in": self.all_in / self.full, "flops_all_in": self.all_in}


def per_sample_ratios(side: dict[str, Any], reference: dict[str, Any]) -> tuple[float, float]:
    """(wall-time ratio, all-in FLOP ratio) of one side's per-sample cost to the reference's."""
    wall = (side["seconds"] / side["samples"]) / (reference["seconds"] / reference["samples"])
    flop = (side["flops_all_in"] / side["samples"]) / (reference["flops_all_in"] / reference["samples"])
    return wall, flop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="a finished BL1 run")
    parser.add_argument("run", type=Path, help="a finished run of the method to compare")
    parser.add_argument("--batches", type=int, default=120, help="timed loader batches")
    parser.add_argument("--warmup", type=int, default=10, help="steps of each side run first, not timed")
    parser.add_argument("--output", type=Path, default=repo_path("bench/results/ag_news/train_wall.json"))
    args = parser.parse_args()
    runs = [load_run(folder) for folder in (args.reference, args.run)]
    warmup = float(runs[1].run.options.get("full_depth_warmup", 0.0))
    if warmup:  # the run's warm-up steps: its settings, freshly prepared (the method starts warming up)
        runs.append(prepare(runs[1].run))
    train, config = runs[0].train, runs[0].run.train
    batches = iterate_batches(train.ids, train.labels, config.batch_size, runs[0].pad_id, shuffle=True,
                              generator=torch.Generator().manual_seed(config.seed * 1000), sort_by_length=True)
    # The other side gets twice the batches: DHT queues samples, so it pulls loader batches ahead of its
    # steps, and it must not reach the end of its data (and flush partial queues) while BL1 is timed.
    batches = [batch for _, batch in zip(range(2 * (args.warmup + args.batches)), batches)]
    shares = [batches[:args.warmup + args.batches], batches, batches[:args.warmup + args.batches]][:len(runs)]
    sides = [Side(prepared, [batch.to(prepared.method.device) for batch in share])
             for prepared, share in zip(runs, shares)]
    while all(side.step(counted=side.count >= args.warmup) for side in sides):  # until BL1's batches run out
        pass
    reference, other, *warm = (side.report() for side in sides)
    # Per sample: DHT's queues may still hold samples of the last batches when the clock stops.
    wall, flop = per_sample_ratios(other, reference)
    result = {"reference": str(args.reference), "run": str(args.run), "batches": args.batches,
              "warmup": args.warmup, "reference_side": reference, "run_side": other}
    if warm:
        if sides[2].method.switched:
            raise SystemExit("train_wall.py: the warm-up side reached its switch to routing; time fewer --batches")
        warm_wall, warm_flop = per_sample_ratios(warm[0], reference)
        result["phases"] = {"full_depth_warmup": warmup, "warmup_side": warm[0],
                            "warmup": {"wall_ratio_per_sample": warm_wall, "flop_ratio_all_in_per_sample": warm_flop},
                            "routed": {"wall_ratio_per_sample": wall, "flop_ratio_all_in_per_sample": flop}}
        wall, flop = warmup * warm_wall + (1 - warmup) * wall, warmup * warm_flop + (1 - warmup) * flop
    result.update(wall_ratio_per_sample=wall, flop_ratio_all_in_per_sample=flop, gap=wall - flop)
    write_result(args.output, result, sides[0].method.device)
    print(f"{args.run} against {args.reference}: wall-time ratio {wall:.3f} per sample, all-in FLOP ratio "
          f"{flop:.3f} (gap {wall - flop:+.3f})")


if __name__ == "__main__":
    main()
