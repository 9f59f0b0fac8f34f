"""DHT (spec; paper §4): Algorithm 2 (search) and Algorithm 3 (queues) through the loop's hooks.

Per loader batch, S1 (``_enqueue``, Alg. 2 lines 1-6, in ``dht/methods/dht_queues.py``): a no-grad probe of
the first b layers gives each sample its context, UCB_L (tree) or UCB_cp (integrated) picks its arm, and the
sample joins the queue of its depth (Alg. 3). A full queue is released as a training batch (``training_step``,
Alg. 2 lines 7-17): the first b layers run again with gradients, then per group of c layers the search mode
picks how many heads and TSB which, the loss is computed per sample, the rewards of §4 update every bandit,
and the loop back-propagates. What differs between tree and integrated search lives in
``dht/search/strategies.py``; arms, rewards, queues, contexts and layouts in the rest of ``dht/search``.
Inference (``dht/methods/dht_inference.py``) is greedy, reuses the probe and queues samples by depth like
training, so each depth runs in full batches.

Levers of ours beyond the paper, each off by default (``dht/methods/dht_options.py``; docs/front.md
measures them): self-distilled exits
(``--self-distill``, dht/search/exits.py), a floor on full-depth samples (``--full-depth-floor``), a
training-time FLOP target (``--train-budget``, dht/search/budget.py), per-layer learning rates that make
up for the steps a layer sat out (``--layer-lr-cap``, dht/training/layer_lr.py), the network trained alone
before the bandits route it frozen (``--full-depth-warmup``, dht/methods/dht_warmup.py), and at inference
the cost weight (``--cost-weight``) and continuation of unsure samples (``--continue-above``).

Decisions of ours where the spec is silent: the probe runs without dropout; arm features are
standardised across arms (see features.py); the queue key is the arm's depth, and a released queue is
computed in two length-sorted chunks when that saves 10% of its padding (queues.length_chunks; one
optimizer step and one bandit update for the whole queue); P-DHT's probe after
the switch is the first layer with all heads, and its bottom d layers form groups of c with the
remainder first (d = 1, 4, 7, 10 -> [1], [1,3], [1,3,3], [1,3,3,3] as in the paper); the P-DHT
preset switches after min(2, epochs - 1) epochs, so that a run as short as BL1's 2 epochs still has
its frozen phase (the paper trains 3-6 epochs and switches after 2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dht.bandits import LinUCB, LinUCBConfig, LogisticTS, LogisticTSConfig
from dht.data import Batch
from dht.flops import classifier_flops, linucb_flops, thompson_flops
from dht.methods.dht_inference import DHTInference
from dht.methods.dht_options import ORACLE_ROWS, OURS, DHTOptions
from dht.methods.dht_queues import DepthQueueing, QueuedBatch
from dht.methods.dht_warmup import FullDepthWarmup
from dht.model import DynamicEncoder, ExecutionPlan
from dht.model.encoder import inverse_permutation
from dht.search.arm_features import ArmFeatures, compute_arm_features
from dht.search.arms import PRESETS, SEARCHES, Arm, load_search
from dht.search.budget import CostWeight
from dht.search.exits import self_distillation
from dht.search.features import HEAD_DIM, TOP_DIM, Contexts, with_arm_features
from dht.search.layout import arm_layout, run_group, sample_plans
from dht.search.queues import DepthQueues, length_chunks
from dht.search.rewards import PreviousBatch, ratio_reward
from dht.search.strategies import GroupDecision, search_strategy
from dht.training.config import RunConfig
from dht.training.distributed import World
from dht.training.hooks import BenchRun, Knob, Method, StepResult, register
from dht.training.layer_lr import LayerLR, layer_group


def hidden_rows(batch: Batch, rows: list[int], part: Batch) -> Tensor | None:
    """The probe states (len(rows), T_part, E) of ``rows`` of a queue, cut to ``part``'s padding; None
    when the queue holds none, or is a plain Batch (S2 then runs the first b layers itself)."""
    hidden = getattr(batch, "hidden", None)
    if hidden is None:
        return None
    return hidden.index_select(0, torch.tensor(rows, device=hidden.device))[:, :part.attention_mask.shape[1]]


@dataclass
class Shard:
    """This rank's rows of a released queue under torchrun, and what the bandits need of the others.

    A queue smaller than the world (an epoch's last, partial one) leaves some ranks no row: such a rank
    runs the queue's first row with weight 0, so that it still takes part in every gather."""

    world: World
    run: list[int]  # the queue's rows this rank runs: its own, or [0] when it has none
    own: int  # how many of them are its own (the rest weigh 0)
    mask: Tensor  # (B, T) the whole queue's attention mask
    arms: list[Arm]  # the whole queue's arms

    @classmethod
    def of(cls, world: World, batch: Batch, arms: list[Arm]) -> Shard | None:
        if not world.distributed:
            return None
        run, own = world.rows_to_run(len(batch))
        return cls(world, run, own, batch.attention_mask, arms)

    def everyone(self, h: Tensor) -> tuple[Tensor, Tensor, list[Arm]]:
        """The whole queue's states (gathered, no gradient), mask and arms, from this rank's states h
        (B_rank, T_rank, E), padded to the queue's T first (a shard's padding is its own rows')."""
        h = F.pad(h.detach()[:self.own], (0, 0, 0, self.mask.shape[1] - h.shape[1]))
        return self.world.gather(h, len(self.mask)), self.mask, self.arms


@register
class DHTMethod(DHTInference, FullDepthWarmup, DepthQueueing, Method):
    """Dynamic layers and heads chosen per sample by LinUCB and logistic Thompson sampling."""

    name = "dht"
    # Under torchrun every rank holds the global batches, queues and bandits, and runs S2 on its rows of
    # each released queue; the contexts and losses the bandits learn from are gathered (``Shard``).
    shards_itself = True
    Options = DHTOptions
    # The cost weight λ is in reward units per full model; rewards are clipped to [0, r_max = 10] and
    # arms differ by as little as 0.02 of the full model, so ±1000 reaches both ends of every arm list.
    # The bench's curve spans the F-DHT runs' reach (0.34-0.79 of BL1's FLOPs on MiniLM-L6, docs/front.md).
    knob = Knob("cost_weight", dearest=-1000.0, cheapest=1000.0, curve=(-10.0, -2.0, 0.0, 2.0, 10.0, 25.0, 50.0))
    # With λ at its cheapest end every sample starts on the cheapest arm and only continuation moves the
    # cost: the knob is then the entropy threshold τ (0: every sample runs on to full depth, 1: none does;
    # a sample's stopping depth only gets shallower as τ grows, so its FLOPs fall weakly with τ).
    continuation_knob = Knob("continue_above", dearest=0.0, cheapest=1.0, curve=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0))
    # The queues release more batches than the loader makes (batches split by depth), so the schedule
    # follows the samples trained on: by steps, the last steps ran at learning rate 0 (issue 20, fault 12).
    schedule_by_samples = True

    @classmethod
    def knob_for(cls, options: dict[str, Any]) -> Knob:
        """λ (``cost_weight``), or τ (``continue_above``) for a run whose λ is at the cheapest end."""
        pinned = float(options.get("cost_weight", 0.0)) >= cls.knob.cheapest
        return cls.continuation_knob if pinned else cls.knob

    def __init__(self, model: DynamicEncoder, run: RunConfig) -> None:
        super().__init__(model, run)
        config, spec = model.config, self.options.config
        search = load_search(spec, config.num_layers, config.num_heads)
        if spec in SEARCHES:  # presets queue one training batch; P-DHT always gets its frozen phase
            switch = None if search.freeze_after is None else min(search.freeze_after, max(1, run.train.epochs - 1))
            search = dataclasses.replace(search, q=run.train.batch_size, freeze_after=switch)
        if self.options.full_depth_warmup and search.freeze_after is not None:
            raise ValueError("--full-depth-warmup cannot be combined with P-DHT's frozen phase (--config p-dht)")
        self.search = search
        self.strategy = search_strategy(search)  # tree or integrated search
        self.N_h = config.num_heads
        self.contexts = Contexts.create()
        self.phase_two = False
        self.ucb_top = self._top_bandit()
        self.tsb = LogisticTS(LogisticTSConfig(self.N_h, 2 * HEAD_DIM, lam=self.search.lam),  # w = [x_head; z_head]
                              generator=torch.Generator().manual_seed(run.train.seed + 1))
        self.generator = torch.Generator().manual_seed(run.train.seed + 2)  # arm-feature sampling
        self.floor_generator = torch.Generator().manual_seed(run.train.seed + 3)  # --full-depth-floor draws
        self.previous = PreviousBatch()
        self.features: ArmFeatures | None = None
        self.queues: DepthQueues = DepthQueues(self.search.q)
        self.pending: list[list[dict]] = []  # released queues not trained yet
        self.consumed = 0  # loader batches of this epoch already queued
        self.overhead = 0.0  # all-in FLOPs (probes, arm features, bandits) not yet charged to a step
        self.pad_id = 0
        self.forced_arm: int | None = None  # inference: every sample on this arm (the oracles' routes)
        self.arm_costs: dict[bool, Tensor] = {}  # each arm list's FLOP shares, for the cost weights
        self.arm_links: dict[bool, list[int | None]] = {}  # each arm list's continuations (next_arms)
        self.lagrange = CostWeight(self.options.train_budget) if self.options.train_budget else None
        cap = self.options.layer_lr_cap
        self.layer_lr = LayerLR(model.config.num_layers, cap) if cap > 1 else None
        self.optimizer: torch.optim.Optimizer | None = None
        self.warm_samples, self.warm_target, self.switched = 0, 0, False  # --full-depth-warmup
        self.routed_samples, self.route_target = 0, 0
        self.train_ids: list[list[int]] = []
        if self.options.exit_classifiers == "per-depth":
            model.add_branch_classifiers()  # one after every layer but the last, which keeps the classifier

    def initialise(self) -> None:
        """Per-depth exit classifiers start as copies of the final one (as FastBERT's branches)."""
        if self.options.exit_classifiers == "per-depth":
            self.model.branches_from_classifier()

    def peak_lr(self) -> float:
        """--warmup-lr where set (ours; with --full-depth-warmup the only schedule is the warm-up's and the
        exits' after it), else the run's --lr."""
        return self.options.warmup_lr or self.run.train.lr

    @property
    def lr_flag(self) -> str:  # type: ignore[override]  # the flag of peak_lr, named when a loss is not finite
        return "--warmup-lr" if self.options.warmup_lr else "--lr"

    def exit_logits(self, h: Tensor, mask: Tensor, arm: Arm) -> Tensor:
        """Logits (B, C) of samples that ran ``arm``, from the last layer's states h (B, T, E): the shared
        classifier (spec §2), or with per-depth exits the classifier of the arm's last layer."""
        return self.logits_at(h, mask, self.search.num_layers if self.phase_two and arm.top else arm.depth)

    def logits_at(self, h: Tensor, mask: Tensor, last: int) -> Tensor:
        """Logits (B, C) from the states h (B, T, E) after layer ``last`` (1-based depth)."""
        if self.options.exit_classifiers == "shared" or last == self.search.num_layers:
            return self.model.classify(h, mask)
        return self.model.classify(h, mask, self.model.branches[last - 1])

    @classmethod
    def bench_runs(cls, num_layers: int) -> list[BenchRun]:
        """The paper's four configurations (§6.1), then ours (``OURS``)."""
        return [BenchRun(preset, {"config": preset}, oracles=preset in ORACLE_ROWS) for preset in PRESETS] + [
            BenchRun(name, options, oracles=name in ORACLE_ROWS) for name, options in OURS.items()]

    @classmethod
    def row_title(cls, row: str) -> str:
        return f"DHT {row.upper()}" + (" (ours)" if row in OURS else "")

    @property
    def arms(self):
        return self.search.phase_two_arms if self.phase_two else self.search.arms

    def _top_bandit(self) -> LinUCB:
        """UCB_L (tree) or UCB_cp (integrated) over w = [x; z_arm]."""
        return LinUCB(LinUCBConfig(len(self.arms), 2 * TOP_DIM, alpha=self.search.explore, lam=self.search.lam))

    # --- epochs: P-DHT's switch and the arm features -----------------------------------
    def on_epoch_start(self, epoch: int, train_ids: list[list[int]], pad_id: int) -> None:
        """Switch P-DHT to its frozen phase when due, then recompute the arm features (§3); during
        --full-depth-warmup nothing routes, and the features wait for the switch."""
        if self.search.freeze_after is not None and epoch >= self.search.freeze_after and not self.phase_two:
            self.phase_two = True
            self._freeze()
            self.ucb_top = self._top_bandit()
        self.pad_id, self.train_ids = pad_id, train_ids
        if not self.warming():  # during --full-depth-warmup nothing routes: the features wait for the switch
            self.compute_features(train_ids)

    def compute_features(self, train_ids: list[list[int]]) -> None:
        """The arm features (§3) on ``feature_samples`` seeded training rows, charged to the all-in cost."""
        order = torch.randperm(len(train_ids), generator=self.generator)[: self.search.feature_samples]
        self.features = compute_arm_features(self.model, self.search, self.arms, self.phase_two,
                                             [train_ids[i] for i in order.tolist()], self.pad_id, self.generator)
        for features in (self.features.top, self.features.head_count, self.features.head):
            self.world.broadcast(features)  # under torchrun: rank 0's, in place (a GPU's sums vary by rank)
        self.overhead += self.features.flops

    def lr_group(self, name: str) -> str:
        """With --layer-lr-cap, each encoder layer is a learning-rate group of its own (``LayerLR``); with
        --full-depth-warmup, the per-depth exits are one (``EXIT_LR_SCALE``)."""
        if self.warmup_exits() and name.startswith("branches."):
            return "exits"
        return layer_group(name) if self.layer_lr else ""

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.scale_exit_rates(optimizer)

    def after_backward(self) -> None:
        """With --layer-lr-cap: count which layers this step reached and scale their rates (``LayerLR``)."""
        if self.layer_lr is not None and self.optimizer is not None:
            self.layer_lr.observe(self.model)
            self.layer_lr.apply(self.optimizer)

    def _freeze(self) -> None:
        self.model.freeze_layers(range(self.search.num_layers - self.search.top))

    def loader_start(self, batches_done: int) -> int:
        return self.consumed

    def on_train_start(self, ids: list[list[int]], labels: list[int], pad_id: int, total_steps: int) -> None:
        self.train_ids, self.pad_id = ids, pad_id  # a resumed run's switch may come before any epoch start
        self.check_training_rows(len(ids))
        self.warm_target = self.warmup_target(len(ids))
        self.route_target = self.run.train.epochs * len(ids) - self.warm_target

    # --- Algorithm 2: S2, rewards and updates ------------------------------------------
    def training_step(self, batch: QueuedBatch) -> StepResult:
        """Alg. 2 lines 7-17 on a released queue (Alg. 3 line 4): S2, the loss, the rewards, the updates.

        Line 7: the batch re-runs the first b layers, now with gradients. Lines 8-14: per group of c
        layers the search mode picks H_o (UCB_H in tree search, the arm's H in integrated search), TSB
        picks which heads, and the group runs. Line 15: the shared classifier reads the last layer's
        mean-pooled states; each sample's loss. Line 16: the rewards (Eqs. 10-15). Line 17: every
        bandit is updated. The queue may run as two length-sorted chunks (``length_chunks``), which
        only saves padding: one loss, one optimizer step, one bandit update for the whole queue.
        After ``--full-depth-warmup``'s switch the encoder is frozen: S2 goes on from the probe's states
        (line 7 would compute them again) without dropout, and only the classifiers get gradients.
        """
        if not isinstance(batch, QueuedBatch):  # --full-depth-warmup (dht_warmup.py)
            return self.warmup_step(batch)
        if not self.switched:
            return self._routed_step(batch)
        was_training = self.model.training  # a frozen encoder routes as at inference: no dropout, as its probe
        self.model.eval()
        self.routed_samples += len(batch)
        try:
            return self._routed_step(batch)
        finally:
            self.model.train(was_training)

    def _routed_step(self, batch: QueuedBatch) -> StepResult:
        arms = [self.arms[a] for a in batch.arms.tolist()]
        distil = self.options.self_distill and not self.phase_two
        exits: list[Tensor] | None = [] if distil else None
        shard = Shard.of(self.world, batch, arms)  # under torchrun: this rank's rows of the queue
        logits, decisions = self._s2_in_chunks(batch, arms, exits, shard)  # lines 7-15
        labels = batch.labels if shard is None else batch.labels[shard.run]
        losses = F.cross_entropy(logits, labels, reduction="none")
        per_sample = losses.detach().cpu()  # the bandits' side of the step runs on the CPU
        if shard is not None:  # every rank learns from the whole queue's losses
            per_sample = self.world.gather(losses[:shard.own], len(batch)).cpu()
        rewards = self._update_bandits(batch, arms, per_sample, decisions)  # lines 16-17
        result = self._step_result(batch, arms, losses, per_sample, decisions, rewards)
        weight = 1.0
        if shard is not None:
            result.shard, weight = shard.own, float(shard.own > 0)
            result.loss = result.loss * weight  # a rank without rows of its own adds no gradient
        if exits:  # ours: the shallower exits learn the deepest one's prediction; the rewards are unchanged
            result.loss = result.loss + weight * self.options.self_distill * self_distillation(exits, logits)
            extra = 3 * len(exits) * len(batch) * classifier_flops(self.model.config)  # trained linear exits
            result.flops, result.flops_all_in = result.flops + extra, result.all_in + extra
            result.extra["exits"] = len(exits)
        return result

    def _s2_in_chunks(self, batch: QueuedBatch, arms: list, exits: list[Tensor] | None = None,
                      shard: Shard | None = None) -> tuple[Tensor, list[GroupDecision]]:
        """S2 on the queue's length-sorted chunks: logits (B, C) and each group's decisions, in batch order;
        with ``exits`` (a list), also the logits (B, C) of each shallower exit depth the samples passed.
        With a ``shard`` (torchrun), S2 runs on this rank's rows, in one chunk: logits and exits are of
        those rows, the decisions of the whole queue."""
        if shard is not None:
            part = batch.rows(shard.run)
            states: list[tuple[int, Tensor]] | None = [] if exits is not None else None
            h, decisions = self._run_s2(part, [arms[i] for i in shard.run], greedy=False,
                                        hidden=hidden_rows(batch, shard.run, part), states=states, shard=shard)
            if exits is not None:
                exits += [self.logits_at(s, part.attention_mask, depth) for depth, s in states]
            return self.exit_logits(h, part.attention_mask, arms[0]), decisions
        logits, chunk_decisions, rows, chunk_exits = [], [], [], []
        for chunk in length_chunks(batch.attention_mask.sum(1).tolist()):
            part = batch.rows(chunk)
            states: list[tuple[int, Tensor]] | None = [] if exits is not None else None
            h, decisions = self._run_s2(part, [arms[i] for i in chunk], greedy=False,
                                        hidden=hidden_rows(batch, chunk, part), states=states)
            logits.append(self.exit_logits(h, part.attention_mask, arms[chunk[0]]))
            chunk_decisions.append(decisions)
            chunk_exits.append([self.logits_at(s, part.attention_mask, depth) for depth, s in states or ()])
            rows += chunk
        back = inverse_permutation(torch.tensor(rows))
        decisions = [GroupDecision.join(list(group), back) for group in zip(*chunk_decisions)]
        if exits is not None:  # a queue holds one depth, so every chunk passed the same exits
            exits += [torch.cat(parts).index_select(0, back.to(self.device)) for parts in zip(*chunk_exits)]
        return torch.cat(logits).index_select(0, back.to(self.device)), decisions

    def _run_s2(self, batch: Batch, arms: list, greedy: bool, hidden: Tensor | None = None,
                states: list[tuple[int, Tensor]] | None = None, start: int = 0,
                shard: Shard | None = None) -> tuple[Tensor, list[GroupDecision]]:
        """Alg. 2 lines 7-14 for samples of one depth: the first b layers (unless ``hidden`` holds
        their states), then per group H_o and the heads, then the group. Returns h (B, T, E) and the
        decisions of the groups that ran; ``states`` (a list) receives (depth, h) at each shallower exit
        passed (after the b layers and each group but the last). With ``start`` > 0, ``hidden`` holds
        the states after group ``start`` - 1 and the groups before it are skipped (continuation). With a
        ``shard`` (torchrun), ``batch`` holds this rank's rows of the queue: the bandits choose for the
        whole queue from the gathered states, and the decisions returned are the whole queue's."""
        model, mask, N_h = self.model, batch.attention_mask, self.N_h
        layout = arm_layout(self.search, arms[0], self.phase_two)
        h = hidden
        if h is None:
            h = model.embed(batch.input_ids)
            if layout.prefix:
                h = model.run_plan(h, mask, ExecutionPlan.first(len(layout.prefix), N_h))
        decisions = []
        for o, group in enumerate(layout.groups):
            if o < start:
                continue
            if states is not None and group[0] > 0:  # an exit depth this sample passes on its way
                states.append((group[0], h))
            seen, seen_mask, seen_arms = (h, mask, arms) if shard is None else shard.everyone(h)
            H_o, W_h, choice = self.strategy.head_counts(o, seen, seen_mask, seen_arms, self.contexts,
                                                         self.features.head_count, greedy)  # line 11
            W_ts = with_arm_features(self.contexts.x_heads(seen, seen_mask, N_h), self.features.head)
            if greedy and self.options.head_sets == "per-batch":  # ours: one set per head count
                kept = self.tsb.select_shared(W_ts, H_o)
            else:
                kept = self.tsb.select(W_ts, H_o, greedy=greedy)  # line 12
            h = run_group(model, h, mask, group, kept if shard is None else kept[shard.run])  # line 14
            decisions.append(GroupDecision(W_ts, kept, H_o, W_h, choice))
        if layout.suffix:
            h = model.run_plan(h, mask, ExecutionPlan.uniform(layout.suffix, range(N_h)))
        return h, decisions

    def _update_bandits(self, batch: QueuedBatch, arms: list, losses: Tensor,
                        decisions: list[GroupDecision]) -> dict[str, Tensor]:
        """Alg. 2 lines 16-17: the §4 rewards (Eqs. 10-15), then every bandit's update (Alg. 1 lines
        8-9; §3.2). ``losses`` (B,) are the samples' losses on the CPU."""
        s, prev, name = self.search, self.previous, self.strategy.top_name
        delta_top, scale = self.strategy.top_cost(losses, arms)
        baseline = prev.baseline(name, delta_top)
        rewards = {"top": ratio_reward(delta_top, baseline, scale, s.r_max)}
        w_top = torch.cat([batch.x, self.features.top[batch.arms]], 1)
        self.ucb_top.update(batch.arms, w_top, rewards["top"])
        for o, decision in enumerate(decisions):
            group = self.strategy.group_rewards(o, decision, losses, arms, delta_top, baseline, prev)
            rewards.update(group)
            self.tsb.update(decision.W_ts, decision.kept, group[f"ts{o}"])
        prev.remember(name, delta_top)
        return rewards

    def _step_result(self, batch: QueuedBatch, arms: list, losses: Tensor, per_sample: Tensor,
                     decisions: list[GroupDecision], rewards: dict[str, Tensor]) -> StepResult:
        """Cost of the step (paper-style and all-in) and one decision record per sample."""
        B = len(batch)
        per_group, plans = sample_plans(self.search, arms, [d.kept for d in decisions], self.phase_two, self.N_h)
        flops, full = self.train_cost(batch, plans)
        top, ts = self.ucb_top.config.dim, self.tsb.config.dim
        bandits = linucb_flops(B, len(self.arms), top, update=True) + len(decisions) * (
            thompson_flops(B, self.N_h, ts, False) + thompson_flops(B, self.N_h, ts, True))
        bandits += self.strategy.bandit_flops(B, len(decisions))
        all_in, self.overhead = flops + self.overhead + bandits, 0.0
        index = batch.index.tolist()
        records = [{"index": index[i], "arm": arms[i].label(self.N_h), "depth": arms[i].depth,
                    "heads": [list(g[i]) for g in per_group], "loss": float(per_sample[i]),
                    "rewards": {k: round(float(v[i]), 4) for k, v in rewards.items()}} for i in range(B)]
        extra = {"phase_two": self.phase_two, **({"lambda": self.lagrange.value} if self.lagrange else {})}
        return StepResult(losses.mean(), flops, full, all_in, extra=extra, records=records)

    # --- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        features = None if self.features is None else dataclasses.asdict(self.features)
        return {"phase_two": self.phase_two, "consumed": self.consumed, "overhead": self.overhead,
                "pad_id": self.pad_id,
                "ucb_top": self.ucb_top.state_dict(), "strategy": self.strategy.state_dict(),
                "tsb": self.tsb.state_dict(), "contexts": self.contexts.state_dict(),
                "previous": self.previous.state_dict(), "features": features,
                "generator": self.generator.get_state(), "floor_generator": self.floor_generator.get_state(),
                "pending": self.pending,
                "queues": {str(k): v for k, v in self.queues.queues.items()},
                "search": self.search.to_dict(),
                "lagrange": None if self.lagrange is None else self.lagrange.state_dict(),
                "layer_lr": None if self.layer_lr is None else self.layer_lr.state_dict(),
                "warm_samples": self.warm_samples, "switched": self.switched, "routed_samples": self.routed_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase_two = bool(state["phase_two"])
        if self.phase_two:
            self._freeze()
            self.ucb_top = self._top_bandit()
        self.consumed, self.overhead = int(state["consumed"]), float(state["overhead"])
        self.pad_id = int(state["pad_id"])
        self.ucb_top.load_state_dict(state["ucb_top"])
        # Runs saved before the search strategies existed hold UCB_H at the top level (it was built for
        # integrated search too, and never used there).
        self.strategy.load_state_dict(state["strategy"] if "strategy" in state else {"ucb_h": state["ucb_h"]})
        self.tsb.load_state_dict(state["tsb"])
        self.contexts.load_state_dict(state["contexts"])
        self.previous.load_state_dict(state["previous"])
        self.features = None if state["features"] is None else ArmFeatures(**state["features"])
        self.generator.set_state(state["generator"])
        if self.lagrange is not None and state.get("lagrange"):
            self.lagrange.load_state_dict(state["lagrange"])
        if self.layer_lr is not None and state.get("layer_lr"):
            self.layer_lr.load_state_dict(state["layer_lr"])
        if "floor_generator" in state:  # runs saved before --full-depth-floor did not draw from it
            self.floor_generator.set_state(state["floor_generator"])
        self.warm_samples, self.switched = int(state.get("warm_samples", 0)), bool(state.get("switched", False))
        self.routed_samples = int(state.get("routed_samples", 0))
        if self.switched:
            self.model.freeze_layers(range(self.search.num_layers))
        self.pending = state["pending"]
        self.queues.queues = {int(k): v for k, v in state["queues"].items()}

    def report(self, output: Path) -> dict[str, Any]:
        from dht.search.records import write_selection_report
        return write_selection_report(output, self.N_h)

