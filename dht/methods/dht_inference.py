"""DHT at inference (paper §5, §6): greedy arms and heads, the probe reused, samples queued by depth.

Part of ``DHTMethod`` (``dht/methods/dht.py``), kept apart so that each file stays readable. Two knobs
of ours act here, neither changes training: the cost weight λ in the greedy arm choice
(``choose_arms``) and continuation (``_continue_unsure``): a sample whose exit is unsure at its arm's
depth runs on to the next depth (``dht/search/exits.py``).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import Tensor

from dht.data import Batch
from dht.flops import classifier_flops, linucb_flops, plan_forward_flops, thompson_flops
from dht.model import ExecutionPlan
from dht.search.exits import next_arms, normalised_entropy
from dht.search.features import with_arm_features
from dht.search.layout import arm_flop_shares, arm_layout, kept_to_heads, sample_plan
from dht.search.queues import DepthQueues
from dht.training.hooks import Prediction, forward_costs, in_batch_order


class DHTInference:
    """The inference half of ``DHTMethod``; it uses the method's model, bandits, search and options."""

    forced_arm: int | None
    arm_costs: dict[bool, Tensor]
    arm_links: dict[bool, list[int | None]]
    lagrange: Any  # dht.search.budget.CostWeight, or None

    @torch.no_grad()
    def predict_batches(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, Prediction]]:
        """Greedy arms and heads. Each loader batch gets its S1 probe and arms; its samples then join
        the queue of their depth with their probe states, and a full queue (the loader's batch size)
        runs as one batch, so depths do not split batches into small parts; the rest run at the end."""
        self.model.eval()
        self.contexts.train(False)  # no labels, no updates: the normalisers stay as trained
        queues: DepthQueues = DepthQueues(self.run.train.eval_batch_size)
        try:
            for batch in batches:
                for items in self._queue_for_inference(batch, queues):
                    yield self._predict_queued(items)
            for _, items in queues.flush():
                yield self._predict_queued(items)
        finally:
            self.contexts.train(True)

    def predict(self, batch: Batch) -> Prediction:
        """One batch's predictions, in its order (predict_batches over this batch alone)."""
        return in_batch_order(batch, list(self.predict_batches([batch])))

    def choose_arms(self, x: Tensor) -> Tensor:
        """Alg. 2 lines 3-6 at inference: the greedy arm per sample (α = 0), each arm's predicted reward
        θᵀw less λ times its share of the full model's FLOPs (λ = ``cost_weight``, 0 by default, plus
        the λ a run trained with ``--train-budget`` learned); x
        (B, TOP_DIM) -> (B,) long. Ties go to the lowest index, as the greedy LinUCB choice."""
        if self.forced_arm is not None:
            return torch.full((len(x),), self.forced_arm, dtype=torch.long)
        predicted = self.ucb_top.scores(with_arm_features(x, self.features.top), greedy=True)  # (B, A)
        weight = self.options.cost_weight + (self.lagrange.value if self.lagrange is not None else 0.0)
        if weight:
            predicted = predicted - weight * self.arm_shares()
        return predicted.argmax(1)

    def arm_shares(self) -> Tensor:
        """Each arm's share of the full model's forward FLOPs (A,) float64, for the cost weights."""
        if self.phase_two not in self.arm_costs:  # one list per phase: P-DHT changes its arms
            self.arm_costs[self.phase_two] = arm_flop_shares(self.model.config, self.search, self.arms,
                                                             self.phase_two)
        return self.arm_costs[self.phase_two]

    def fixed_routes(self) -> list[str]:
        """The current arm list's labels, as the arms are listed."""
        return [arm.label(self.N_h) for arm in self.arms]

    def predict_route_batches(self, batches: Iterable[Batch], route: str) -> Iterator[tuple[Batch, Prediction]]:
        """Every sample on the arm labelled ``route``, with greedy heads and no continuation."""
        self.forced_arm = self.fixed_routes().index(route)
        try:
            yield from self.predict_batches(batches)
        finally:
            self.forced_arm = None

    def _queue_for_inference(self, batch: Batch, queues: DepthQueues) -> list[list[dict]]:
        """S1 and each sample's arm (``choose_arms``), queued by depth."""
        h_probe, x = self._probe(batch)
        chosen = self.choose_arms(x).tolist()
        select = linucb_flops(1, len(self.arms), self.ucb_top.config.dim, update=False)
        probe = ExecutionPlan.first(1, self.N_h)

        def extra(i: int, length: int) -> dict:
            if self.phase_two:  # P-DHT's plans restart at layer 0: its first-layer probe is extra work
                return {"h": None, "overhead": select + plan_forward_flops(self.model.config, probe, length,
                                                                           classify=False)}
            return {"h": h_probe[i, :length], "overhead": select}
        return self._queue_samples(batch, chosen, queues, extra)

    def _predict_queued(self, items: list[dict]) -> tuple[Batch, Prediction]:
        """S2 for samples of one depth; the probe's states continue into the chosen layers, and unsure
        samples continue deeper when ``continue_above`` < 1."""
        batch = self._collate(items)
        hidden = None
        if items[0]["h"] is not None:  # (B, T, E); padding stays zero, masked out like the pad tokens' states
            hidden = torch.nn.utils.rnn.pad_sequence([i["h"] for i in items], batch_first=True)
        chosen = [i["arm"] for i in items]
        arms = [self.arms[a] for a in chosen]
        h, decisions = self._run_s2(batch, arms, greedy=True, hidden=hidden)
        logits = self.exit_logits(h, batch.attention_mask, arms[0])
        heads: list[list[Any]] = [[] for _ in items]  # per sample, each group's kept heads
        add_kept_heads(heads, range(len(items)), decisions)
        final, reads = list(chosen), [0] * len(items)
        if self.options.continue_above < 1 and self.forced_arm is None:
            logits = self._continue_unsure(batch, h, logits, final, heads, reads)
        layouts = {a: arm_layout(self.search, self.arms[a], self.phase_two) for a in set(final)}
        plans = [sample_plan(layouts[a], groups, self.N_h) for a, groups in zip(final, heads)]
        flops, full = forward_costs(self.model, batch, plans)
        extra = torch.tensor(reads, dtype=torch.float64) * classifier_flops(self.model.config)
        flops = flops + extra  # the exits read on the way ran too
        overhead = torch.tensor([i["overhead"] for i in items], dtype=torch.float64)
        overhead += torch.tensor([len(g) for g in heads], dtype=torch.float64) * thompson_flops(
            1, self.N_h, self.tsb.config.dim, False)
        routes = [self.arms[a].label(self.N_h) + (f">{self.arms[b].label(self.N_h)}" if a != b else "")
                  for a, b in zip(chosen, final)]
        return batch, Prediction(logits, flops, full, flops + overhead, routes)

    def _continue_unsure(self, batch: Batch, h: Tensor, logits: Tensor, arms: list[int],
                         heads: list[list[Any]], reads: list[int]) -> Tensor:
        """Ours (issue 23): while a sample's normalised entropy is above ``continue_above`` and a deeper
        arm extends its own (``next_arms``), it runs that arm's further groups from its current states
        with greedy heads, and its prediction becomes the deeper exit's. Updates ``arms`` (each sample's
        final arm), ``heads`` (its kept heads per group) and ``reads`` (exits read before the final
        one) in place; returns the logits (B, C)."""
        links = self._next_arms()
        logits = logits.clone()
        rows = list(range(len(arms)))
        while rows:
            unsure = (normalised_entropy(logits[rows]) > self.options.continue_above).tolist()
            going = [k for k, r in enumerate(rows) if unsure[k] and links[arms[r]] is not None]
            if not going:
                break
            part = batch.rows([rows[k] for k in going])
            h = h.index_select(0, torch.tensor(going, device=h.device))[:, :part.input_ids.shape[1]]
            rows = [rows[k] for k in going]
            start = len(arm_layout(self.search, self.arms[arms[rows[0]]], False).groups)
            for r in rows:
                reads[r] += 1
                arms[r] = links[arms[r]]
            deeper = [self.arms[arms[r]] for r in rows]
            h, decisions = self._run_s2(part, deeper, greedy=True, hidden=h, start=start)
            logits[rows] = self.exit_logits(h, part.attention_mask, deeper[0]).to(logits.dtype)
            add_kept_heads(heads, rows, decisions)
        return logits

    def _next_arms(self) -> list[int | None]:
        """Each arm's continuation (``next_arms``), once per arm list; none for P-DHT after its switch."""
        if self.phase_two not in self.arm_links:
            self.arm_links[self.phase_two] = ([None] * len(self.arms) if self.phase_two
                                              else next_arms(self.search, self.arms))
        return self.arm_links[self.phase_two]


def add_kept_heads(heads: list[list[Any]], rows: Iterable[int], decisions: list) -> None:
    """Append each group decision's kept heads (a tuple per sample) to ``heads[row]`` of the samples that
    ran it, ``rows`` in the decisions' batch order."""
    rows = list(rows)
    for decision in decisions:
        for r, kept in zip(rows, kept_to_heads(decision.kept)):
            heads[r].append(kept)
