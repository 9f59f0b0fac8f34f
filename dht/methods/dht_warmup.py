"""DHT's network first, then its bandits (``--full-depth-warmup W``, ours; issue 23).

Part of ``DHTMethod`` (``dht/methods/dht.py``), kept apart so that each file stays readable.

Why: the paper trains the network and the bandits together, so most steps stop at a shallow exit.
``bench/replay_batches.py`` replayed an F-DHT run's steps through BL1's network: at full depth they
give BL1's macro-F1 (0.905), at the depths the bandits chose 0.891, and the shallow steps' gradients
pull the lower layers towards a shallow exit at the cost of the deeper ones. No floor, per-layer rate or
per-depth classifier closed that (docs/front.md). FastBERT, above DHT on the front, trains its backbone
in full first and only then its exits. This lever does the same inside one DHT run, at a training cost
the user sets:

1. For the first W share of the run's training samples every loader batch runs the whole network (all
   layers, all heads), as BL1 trains, on a learning-rate schedule of its own that ends at 0 when the
   share is reached. With ``--self-distill``, each shallower exit of DHT's layout reads the states
   there *detached* and learns the deepest exit's prediction: the exits learn, the layers do not bend
   towards them. With ``--exit-classifiers per-depth`` those exits learn at ``EXIT_LR_SCALE`` times the
   layers' rate, as FastBERT's branches. No probe runs and no bandit learns: nothing routes yet.
2. Then the encoder (embeddings and every layer) is frozen and the paper's training steps run for the
   rest of the run: S1 probes, queues, S2 with the bandits' arms and heads, the rewards of §4 and every
   bandit's update, all from the losses of the trained network. S2 goes on from the probe's states (no
   second pass over the first b layers) without dropout, as at inference, and runs the encoder forward
   only: the bandits learn to route a network that no longer moves. The layers' schedule is over (rate
   0); the per-depth exits keep learning on the frozen states, from the layers' peak rate times
   ``EXIT_LR_SCALE`` down to 0 over the routed samples (``group_lr``), while the deepest classifier,
   their teacher, stays as trained.

At W = 0.5 on MiniLM-L6 this trains at 0.63 of BL1's FLOPs (all-in, AG News, three seeds): one epoch of
BL1's work, then one epoch of probes and forward passes (docs/front.md).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch.nn.functional as F

from dht.data import Batch
from dht.flops import classifier_flops
from dht.model import ExecutionPlan
from dht.search.exits import self_distillation
from dht.search.layout import arm_layout
from dht.training.hooks import StepResult

# The warm-up's exits read detached states: only their linear classifiers learn, as FastBERT's branches
# do, so they learn at FastBERT's branch rate (1e-3) against the fine-tuning rate (1e-4) of the layers. At
# the layers' rate, F-DHT's 2-layer exit scored 0.47 macro-F1 on AG News after the warm-up (seed 0).
EXIT_LR_SCALE = 10.0


class FullDepthWarmup:
    """The warm-up half of ``DHTMethod``; it uses the method's model, search, options and world."""

    warm_samples: int  # training samples run at full depth so far
    warm_target: int  # how many the warm-up runs (W x epochs x training rows); 0: no warm-up
    switched: bool  # whether the encoder is frozen and the bandits route
    routed_samples: int  # training samples routed since the switch
    route_target: int  # how many the run routes (its training samples less the warm-up's)

    def warmup_target(self, train_rows: int) -> int:
        """W x the run's training samples (epochs x rows), rounded: the warm-up's length in samples."""
        return round(self.options.full_depth_warmup * self.run.train.epochs * train_rows)

    def check_training_rows(self, rows: int) -> None:
        """A warm-up must hold at least one of the run's training samples and leave one to route."""
        total, warm = self.run.train.epochs * rows, self.warmup_target(rows)
        if self.options.full_depth_warmup and not 0 < warm < total:
            raise ValueError(f"--full-depth-warmup {self.options.full_depth_warmup} leaves {warm} of the run's "
                             f"{total} training samples to the warm-up: it needs at least one and one to route")

    def warming(self) -> bool:
        """Whether the next loader batch still belongs to the warm-up."""
        return self.warm_samples < self.warm_target

    def schedule_samples(self, total_samples: int) -> int:
        """The learning-rate schedule spans the warm-up only: it ends at 0 when the encoder freezes."""
        return self.warm_target if self.warm_target else total_samples

    def warmup_exits(self) -> bool:
        """Whether the warm-up trains per-depth exits (a learning-rate group of their own)."""
        return self.options.full_depth_warmup > 0 and self.options.exit_classifiers == "per-depth"

    def scale_exit_rates(self, optimizer) -> None:
        """The exits' group learns at ``EXIT_LR_SCALE`` times the schedule's rate (the loop applies
        ``lr_scale`` at every step)."""
        for group in optimizer.param_groups:
            if group.get("lr_group") == "exits":
                group["lr_scale"] = EXIT_LR_SCALE

    def group_lr(self, group: str, lr: float) -> float:
        """After the switch the layers' schedule is over (rate 0), but the per-depth exits go on learning
        on the frozen encoder, as FastBERT's branches do on BL1's: from the layers' peak rate (times
        ``EXIT_LR_SCALE``) down to 0 over the routed samples."""
        if group != "exits" or not self.switched:
            return lr
        return self.peak_lr() * max(0.0, 1 - self.routed_samples / max(1, self.route_target))

    def switch_to_routing(self, train_ids: list[list[int]]) -> None:
        """End of the warm-up: freeze the encoder and compute the arm features on the trained network."""
        self.switched = True
        self.model.freeze_layers(range(self.search.num_layers))
        self.compute_features(train_ids)

    def warmup_step(self, batch: Batch) -> StepResult:
        """One loader batch through every layer and head (BL1's step), plus the detached self-distilled
        exits with ``--self-distill``. Under torchrun each rank runs its rows (``StepResult.shard``)."""
        model, N_h = self.model, self.N_h
        part, own = batch, None
        if self.world.distributed:
            rows, own = self.world.rows_to_run(len(batch))
            part = batch.rows(rows)
        mask = part.attention_mask
        deepest = self.arms[self.deepest_arm()]  # before the switch: the paper's arm list (P-DHT is refused)
        layout = arm_layout(self.search, deepest, False)
        h = model.embed(part.input_ids)
        if layout.prefix:
            h = model.run_plan(h, mask, ExecutionPlan.first(len(layout.prefix), N_h))
        states = []
        for group in layout.groups:
            if group[0] > 0:
                states.append((group[0], h.detach()))  # the exits learn; the layers below them do not bend
            h = model.run_plan(h, mask, ExecutionPlan.uniform(group, range(N_h)))
        logits = self.logits_at(h, mask, deepest.depth)
        loss = F.cross_entropy(logits, part.labels)
        plan = ExecutionPlan.first(deepest.depth, N_h)
        flops, full = self.train_cost(batch, plan)  # the whole batch's, as DHT's other steps
        extra: dict[str, Any] = {"warmup": True}
        if self.options.self_distill and states:
            exits = [self.logits_at(s, mask, depth) for depth, s in states]
            loss = loss + self.options.self_distill * self_distillation(exits, logits)
            flops += 3 * len(exits) * len(batch) * classifier_flops(model.config)  # trained linear exits
            extra["exits"] = len(exits)
        result = StepResult(loss, flops, full, flops, extra=extra)
        if own is not None:
            result.shard = own
            result.loss = result.loss * float(own > 0)  # a rank without rows of its own adds no gradient
        return result

    def warmup_batches(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """The loader's batches while the warm-up lasts, counted as they are handed out (the loop trains
        and checkpoints each before asking for the next)."""
        for batch in batches:
            self.consumed += 1
            self.warm_samples += len(batch)
            yield batch
            if not self.warming():
                return
