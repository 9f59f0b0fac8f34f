"""Train BL1's network on the steps a DHT run took, read from its decisions.jsonl, to tell apart what
DHT's training changes: which samples share a batch, how deep each batch runs, and what the shallow
batches' gradients do to the layers.

DHT's queues (spec §5) release a batch per depth, and the bandits send samples of similar content to
the same depth, so its batches are far more class-skewed than BL1's shuffled ones (``class_skew``).
- default: each step has the DHT run's samples, in its order, through every layer and head;
- ``--depths``: each step also runs at the depth the DHT run gave it (all heads, shared classifier);
- ``--shuffle``: each epoch's samples are dealt into steps at random (BL1's composition), keeping the
  step sizes and, with ``--depths``, the depth of each step;
- ``--detach-shallow`` (with ``--depths``): a step shallower than the network trains the classifier only,
  so the layers learn from full-depth steps alone, as when they see fewer samples but no early exit.
Everything else is BL1's recipe with the DHT run's settings (seed, epochs, learning rate).

Usage: python bench/replay_batches.py DHT_RUN --output runs/replay [--depths [--detach-shallow]] [--shuffle]
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from dht.data import Batch, collate
from dht.model import ExecutionPlan
from dht.provenance import write_result
from dht.training.config import RunConfig, run_file
from dht.training.hooks import BenchRun, Method, StepResult, register
from dht.training.loop import train
from dht.training.options import MethodOptions, option


def replay_steps(decisions: Path) -> dict[int, list[tuple[list[int], int]]]:
    """Per epoch, each step's training samples (split positions) and depth, in step order."""
    steps: dict[tuple[int, int], list[int]] = defaultdict(list)
    depths: dict[tuple[int, int], int] = {}
    with open(decisions, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            key = record["epoch"], record["step"]
            steps[key].append(record["index"])
            depths[key] = record["depth"]  # one per step: a released batch is one depth's queue
    epochs: dict[int, list[tuple[list[int], int]]] = defaultdict(list)
    for key in sorted(steps):
        epochs[key[0]].append((steps[key], depths[key]))
    return dict(epochs)


def shuffled_steps(steps: list[tuple[list[int], int]], seed: int) -> list[tuple[list[int], int]]:
    """The same step sizes and depths, with the epoch's samples dealt into them at random."""
    samples = [i for step, _ in steps for i in step]
    random.Random(seed).shuffle(samples)
    dealt, start = [], 0
    for step, depth in steps:
        dealt.append((samples[start:start + len(step)], depth))
        start += len(step)
    return dealt


def class_skew(steps: list[list[int]], labels: list[int], seed: int = 0) -> tuple[float, float]:
    """Mean share of the commonest class in the full-size steps, and the same for random batches."""
    def top_share(samples: list[int]) -> float:
        return max(Counter(labels[i] for i in samples).values()) / len(samples)
    size = max(len(s) for s in steps)
    full = [s for s in steps if len(s) == size]
    rng = random.Random(seed)
    shuffled = [rng.sample(range(len(labels)), size) for _ in full]
    return (sum(map(top_share, full)) / len(full), sum(map(top_share, shuffled)) / len(shuffled))


LAST: list[Replay] = []  # the replays built in this process (main reads the labels they saw)


@dataclass
class ReplayedBatch(Batch):
    """A replayed step and the depth it runs at."""

    depth: int = 0


@dataclass(frozen=True)
class ReplayOptions(MethodOptions):
    """What to replay and what to change."""

    replay: str = option("", "the finished DHT run folder whose training steps are replayed")
    depths: bool = option(False, "run each step at the DHT run's depth for it")
    shuffle: bool = option(False, "deal each epoch's samples into the steps at random")
    detach_shallow: bool = option(False, "with depths: shallower steps train the classifier only")


@register
class Replay(Method):
    """BL1's network, but each epoch's batches are the replayed steps, not the loader's, each run at
    full depth or (``depths``) at its step's depth with all heads; evaluation batches run in full."""

    name = "replay"
    Options = ReplayOptions

    def __init__(self, model, run: RunConfig) -> None:
        super().__init__(model, run)
        options: ReplayOptions = self.options
        steps = replay_steps(Path(options.replay) / "decisions.jsonl")
        if options.shuffle:
            steps = {epoch: shuffled_steps(s, run.train.seed * 1000 + epoch) for epoch, s in steps.items()}
        self.steps, self.use_depths, self.detach_shallow = steps, options.depths, options.detach_shallow
        self.epoch, self.pad_id = 0, 0
        self.labels: dict[int, int] = {}
        LAST.append(self)

    @classmethod
    def bench_runs(cls, num_layers: int) -> list[BenchRun]:
        return []  # an experiment on a DHT run's steps, not a row of dht bench

    def plans(self, batch: Batch) -> ExecutionPlan:
        config = self.model.config
        return ExecutionPlan.first(batch.depth if isinstance(batch, ReplayedBatch) else config.num_layers,
                                   config.num_heads)

    def training_step(self, batch: ReplayedBatch) -> StepResult:
        if not (self.detach_shallow and batch.depth < self.model.config.num_layers):
            return super().training_step(batch)
        plan, model = self.plans(batch), self.model
        with torch.no_grad():
            h = model.run_plan(model.embed(batch.input_ids), batch.attention_mask, plan)
        loss = F.cross_entropy(model.classify(h, batch.attention_mask), batch.labels)
        return StepResult(loss, *self.train_cost(batch, plan))

    def on_epoch_start(self, epoch: int, train_ids: list[list[int]], pad_id: int) -> None:
        self.epoch, self.pad_id = epoch, pad_id

    def training_batches(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        samples: dict[int, tuple[list[int], int]] = {}
        for batch in batches:  # one epoch of the loader: every training sample once
            for ids, mask, label, index in zip(batch.input_ids, batch.attention_mask, batch.labels, batch.index):
                samples[int(index)] = (ids[mask].tolist(), int(label))
                self.labels[int(index)] = int(label)
        device, full = self.device, self.model.config.num_layers
        for step, depth in self.steps[self.epoch]:
            ids, labels = zip(*(samples[i] for i in step))
            batch = collate(ids, labels, step, self.pad_id)
            yield ReplayedBatch(batch.input_ids, batch.attention_mask, batch.labels, batch.index,
                                depth=depth if self.use_depths else full).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dht_run", type=Path, help="a finished DHT run folder (decisions.jsonl, run.json)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--depths", action="store_true", help="run each step at the DHT run's depth for it")
    parser.add_argument("--shuffle", action="store_true", help="deal each epoch's samples into steps at random")
    parser.add_argument("--detach-shallow", action="store_true",
                        help="with --depths: shallower steps train the classifier only, not the layers")
    args = parser.parse_args()
    if args.detach_shallow and not args.depths:
        parser.error("--detach-shallow needs --depths")
    for path in (run_file(args.dht_run), args.dht_run / "decisions.jsonl"):
        if not path.is_file():
            parser.error(f"{args.dht_run} has no {path.name}: give a finished DHT run folder")
    if run_file(args.output).exists():
        parser.error(f"{args.output} already holds a run; choose another --output")
    config = json.loads(run_file(args.dht_run).read_text(encoding="utf-8"))
    options = {"replay": str(args.dht_run), "depths": args.depths, "shuffle": args.shuffle,
               "detach_shallow": args.detach_shallow}
    run = RunConfig.from_dict({**config["run"], "method": "replay", "options": options})
    metrics = train(run, args.output, progress=False)
    replayed = LAST[-1]
    labels = [replayed.labels[i] for i in range(len(replayed.labels))]
    skew, shuffled = class_skew([s for epoch in replayed.steps.values() for s, _ in epoch], labels)
    result = {**options, "seed": run.train.seed, "f1_macro": metrics["test"]["f1_macro"],
              "accuracy": metrics["test"]["accuracy"], "steps": metrics["train"]["steps"],
              "top_class_share": skew, "top_class_share_shuffled": shuffled}
    write_result(args.output / "replay.json", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
