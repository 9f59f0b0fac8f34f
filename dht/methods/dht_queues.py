"""DHT's S1 and queues (spec; paper Alg. 2 lines 1-6 and Algorithm 3): the half of ``DHTMethod`` that turns
loader batches into released queues.

Per loader batch a no-grad probe of the first b layers gives each sample its context, UCB_L (tree) or UCB_cp
(integrated) picks its arm (ours, when set: the training budget's cost weight and the full-depth floor shift
the choice), and the sample joins the queue of its arm's depth; a full queue is released as a training batch
(``QueuedBatch``) for S2 (``DHTMethod.training_step``). During ``--full-depth-warmup`` loader batches pass
through at full depth (dht/methods/dht_warmup.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from dht.data import Batch, collate
from dht.flops import linucb_flops, plan_forward_flops
from dht.model import ExecutionPlan
from dht.search.features import with_arm_features
from dht.search.layout import probe_layers
from dht.search.queues import DepthQueues
from dht.training.hooks import NonFiniteError


@dataclass
class QueuedBatch(Batch):
    """A released queue: the padded batch plus each sample's arm and S1 context."""

    arms: Tensor = None  # (B,) long: index into the current arm list
    x: Tensor = None  # (B, TOP_DIM) float64: normalised S1 context
    hidden: Tensor | None = None  # (B, T, E) the probe's states, when S2 goes on from them (frozen encoder)


class DepthQueueing:
    """S1 and the queues of ``DHTMethod``; it uses the method's model, bandits, search, options and world."""

    pending: list[list[dict]]  # released queues not trained yet
    consumed: int  # loader batches of this epoch already queued
    overhead: float  # all-in FLOPs not yet charged to a step
    queues: DepthQueues
    lagrange: Any  # dht.search.budget.CostWeight, or None

    def training_batches(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        yield from self._drain()
        if self.warming():  # --full-depth-warmup: plain loader batches, trained at full depth
            yield from self.warmup_batches(batches)
            if self.warming():
                self.consumed = 0
                return
        if self.warm_target and not self.switched:
            self.switch_to_routing(self.train_ids)
        for batch in batches:
            self.pending.extend(self._enqueue(batch))
            self.consumed += 1
            yield from self._drain()
        self.pending.extend(items for _, items in self.queues.flush())
        yield from self._drain()
        self.consumed = 0

    def _drain(self) -> Iterator[QueuedBatch]:
        while self.pending:
            items = self.pending.pop(0)
            batch = self._collate(items)
            hidden = None  # the probe's states (B, T, E), kept for a frozen encoder; padding stays zero, masked out
            if "h" in items[0]:
                hidden = torch.nn.utils.rnn.pad_sequence([i["h"] for i in items], batch_first=True).to(self.device)
            yield QueuedBatch(batch.input_ids, batch.attention_mask, batch.labels, batch.index,
                              arms=torch.tensor([i["arm"] for i in items]), x=torch.stack([i["x"] for i in items]),
                              hidden=hidden)

    @torch.no_grad()
    def _probe(self, batch: Batch, spread: bool = False) -> tuple[Tensor, Tensor]:
        """S1: hidden states after the probe layers (no grad, no dropout) and the normalised context x.
        ``spread`` (training under torchrun): each rank probes its rows and the states are gathered."""
        was_training = self.model.training
        self.model.eval()
        mask, rows, own = batch.attention_mask, list(range(len(batch))), len(batch)
        if spread and self.world.distributed:  # a rank without rows of its own probes row 0, unused
            rows, own = self.world.rows_to_run(len(batch))
        h = self.model.run_plan(self.model.embed(batch.input_ids[rows]), mask[rows],
                                ExecutionPlan.first(probe_layers(self.search, self.phase_two), self.N_h))
        if spread:
            h = self.world.gather(h[:own], len(batch))
        self.model.train(was_training)
        if not torch.isfinite(h).all():  # diverged weights: say so, not that a context holds a NaN
            raise NonFiniteError("the probe's hidden states are not finite (the weights have diverged)")
        x = self.contexts.x_top(h, mask)
        return h, x

    def _enqueue(self, batch: Batch) -> list[list[dict]]:
        """Alg. 2 lines 2-6 and Alg. 3: choose each sample's arm and queue it by depth."""
        h, x = self._probe(batch, spread=True)
        W = with_arm_features(x, self.features.top)
        if self.lagrange is None:
            chosen = self.ucb_top.select(W).tolist()
        else:  # ours: the budget's cost weight shifts the choice; λ steps towards the target (budget.py)
            shares = self.arm_shares()
            penalty = self.lagrange.value * shares
            chosen = (self.ucb_top.scores(W) - penalty).argmax(1).tolist()
            greedy = (self.ucb_top.scores(W, greedy=True) - penalty).argmax(1)  # inference's choice
            self.lagrange.update(shares[greedy])
            self.overhead += linucb_flops(len(batch), len(self.arms), self.ucb_top.config.dim, update=False)
        if self.options.full_depth_floor:
            chosen = self._floor(chosen)
        self.overhead += linucb_flops(len(batch), len(self.arms), self.ucb_top.config.dim, update=False)
        if self.switched:  # --full-depth-warmup: a frozen encoder's S2 goes on from the probe's states, counted there
            return self._queue_samples(batch, chosen, self.queues,
                                       lambda i, length: {"x": x[i], "h": h[i, :length].clone()})  # not a view
        probe = ExecutionPlan.first(probe_layers(self.search, self.phase_two), self.N_h)
        lengths = batch.attention_mask.sum(1).tolist()
        self.overhead += sum(plan_forward_flops(self.model.config, probe, t, classify=False) for t in lengths)
        return self._queue_samples(batch, chosen, self.queues, lambda i, length: {"x": x[i]})

    def _floor(self, chosen: list[int]) -> list[int]:
        """Ours (issue 23): each sample goes to the deepest arm (most heads) with probability
        ``full_depth_floor``, whatever UCB chose. Layers above the shallowest exits learn only from the
        samples that reach them (``bench/replay_batches.py``); the floor guarantees them a share. The
        bandits are updated with the arm each sample ran, as for any other choice."""
        deepest = self.deepest_arm()
        draws = torch.rand(len(chosen), generator=self.floor_generator) < self.options.full_depth_floor
        return [deepest if forced else arm for arm, forced in zip(chosen, draws.tolist())]

    def deepest_arm(self) -> int:
        """The index of the current arm list's deepest arm (most heads among the deepest)."""
        return max(range(len(self.arms)), key=lambda a: (self.arms[a].depth, self.arms[a].heads or 0))

    def _queue_samples(self, batch: Batch, chosen: list[int], queues: DepthQueues,
                       extra: Callable[[int, int], dict]) -> list[list[dict]]:
        """Alg. 3 lines 2-5: each sample (tokens, label, arm, plus ``extra(row, length)``) joins the queue
        of its arm's depth; returns the queues that filled."""
        lengths = batch.attention_mask.sum(1).tolist()
        ids, labels, index = batch.input_ids.tolist(), batch.labels.tolist(), batch.index.tolist()  # one copy
        released = []
        for i, arm in enumerate(chosen):
            item = {"index": index[i], "ids": ids[i][:lengths[i]], "label": labels[i], "arm": arm,
                    **extra(i, lengths[i])}
            full = queues.push(self.arms[arm].depth, item)
            if full is not None:
                released.append(full)
        return released

    def _collate(self, items: list[dict]) -> Batch:
        """A released queue's samples, padded into one batch on the network's device."""
        return collate([i["ids"] for i in items], [i["label"] for i in items], [i["index"] for i in items],
                       self.pad_id).to(self.device)
