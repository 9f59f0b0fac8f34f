"""Transformer⁻¹ (Ji et al., 2025; ``../shared/spec/transformer_inverse.md``): a complexity predictor and a
recurrent PPO policy choose each sample's path: its width before layer 0 (preset ``tinv-w``: all heads or each
layer's 2/3 most important; ``tinv``: all heads) and, after each layer, whether to halt.

- Phase A (§7): every step runs all N_L layers (tinv-w: at a width drawn per batch, once heads are ordered by
  importance at epoch 2's start); the shared classifier reads every depth, and the deep exit teaches the
  shallow ones through logits and pooled features (``dual_path_loss``). On the same forward each sample
  yields a whole counterfactual episode for the policy (``episodes``); PPO updates every ``PPO_EVERY``
  steps. At the start of epoch 2 the predictor is fitted on epoch 1's labels.
- Phase C (§7, ``calibrate``): after the last step, eval-mode exits of 4,096 training rows at every width
  refit the predictor and train the policy for 20 more PPO rounds; counted in the all-in training cost.
- Inference (§8, §11; ``dht/methods/tinv_inference.py``): layer by layer on the folded stack. Controllers
  (``--controller``): ``policy`` (``--cost-weight λ``, the ``--budget`` knob), ``predictor`` alone (halt once
  P(c(x) ≤ d) ≥ ``--predictor-quantile``) and ``entropy`` (BL3's exit rule on the same exits,
  ``--entropy-threshold``). The oracles of §9 are ``dht evaluate --oracle`` over the fixed paths.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from dht.control.complexity import (
    ComplexityPredictor,
    TokenStatistics,
    first_correct_depth,
    lightgbm_available,
    mean_embedding,
    token_kinds,
)
from dht.control.policy import (
    Episodes,
    HaltingPolicy,
    episode_rewards,
    exit_statistics,
    observation,
    observation_width,
    ppo_update,
    rollout,
    sample,
)
from dht.data import Batch
from dht.data.batching import collate
from dht.flops import classifier_flops, full_forward_flops, layer_forward_flops, plan_forward_flops
from dht.methods.tinv_inference import TInvInference
from dht.model import DynamicEncoder
from dht.model.folding import head_importance
from dht.training.config import RunConfig
from dht.training.hooks import BenchRun, Knob, Method, StepResult, register
from dht.training.options import MethodOptions, option

PPO_EVERY = 8  # training steps per PPO update (256 episodes at batch 32)
CALIBRATION_ROWS, CALIBRATION_ROUNDS = 4096, 20
COST_WEIGHTS = (1 / 8, 2.0)  # λ is drawn log-uniformly in this range per training episode
ALPHA, TAU, MU, ETA = 0.5, 2.0, 1.0, 0.1  # dual-path distillation (§7) and reward shaping (§6)
ENTROPY_COEF = (0.01, 0.001)  # PPO's entropy bonus, linearly from the first to the last update
CONTROLLERS = ("policy", "predictor", "entropy")
PRESETS = ("tinv", "tinv-w")  # depth only; depth x width (all heads, or the 2/3 most important)
IMPORTANCE_ROWS = 512  # training rows head importance is measured on (spec §3)


@dataclass(frozen=True)
class TInvOptions(MethodOptions):
    """Transformer⁻¹'s settings (spec §13)."""

    config: str = option("tinv", "Transformer⁻¹ preset: tinv (depth only) or tinv-w (depth x width: all heads or "
                         "each layer's 2/3 most important)")
    predictor: str = option("lightgbm", "complexity predictor: lightgbm (pip install '.[tinv]') or logistic")
    controller: str = option("policy", "who halts at inference: policy, predictor or entropy", inference=True)
    cost_weight: float = option(0.5, "λ: the policy's price of compute (trained over 1/8..2; the --budget knob)",
                                inference=True)
    predictor_quantile: float = option(0.5, "predictor controller: halt once P(needed depth <= d) reaches this",
                                       inference=True)
    entropy_threshold: float = option(0.3, "entropy controller: halt once the exit's normalised entropy is below",
                                      inference=True)
    buckets: bool = option(False, "pad the running samples and their lengths up to fixed shape buckets, warmed "
                           "up at load (spec §11)", inference=True)
    compile: bool = option(False, "torch.compile the folded layer once per length bucket (implies --buckets; "
                           "minutes to compile on a CPU)", inference=True)
    graphs: bool = option(False, "replay one CUDA graph per layer, width and shape bucket, captured at load "
                          "(spec §11; needs --device cuda)", inference=True)

    def __post_init__(self) -> None:
        if self.config not in PRESETS:
            raise ValueError(f"--config must be one of {', '.join(PRESETS)} for tinv, got {self.config!r}")
        if self.predictor not in ("lightgbm", "logistic"):
            raise ValueError(f"--predictor must be lightgbm or logistic, got {self.predictor!r}")
        if self.controller not in CONTROLLERS:
            raise ValueError(f"--controller must be one of {', '.join(CONTROLLERS)}, got {self.controller!r}")
        if not self.cost_weight >= 0:
            raise ValueError(f"--cost-weight must be >= 0, got {self.cost_weight}")
        if self.graphs and self.compile:
            raise ValueError("--graphs and --compile are two ways to pre-compile the layers: give one")
        for name in ("predictor_quantile", "entropy_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")


def dual_path_loss(exit_logits: Tensor, pooled: Tensor, labels: Tensor) -> Tensor:
    """L_A of spec §7: CE at depth N_L + the mean over shallower depths d of (1 − α)·CE(z_d, y) +
    α·τ²·KL(softmax(sg(z_N)/τ) ‖ softmax(z_d/τ)) + μ·‖pool_d − sg(pool_N)‖² / E.
    exit_logits (B, N_L, C), pooled (B, N_L, E), labels (B,) -> scalar."""
    deep, shallow = exit_logits[:, -1], exit_logits[:, :-1]
    loss = F.cross_entropy(deep, labels)
    if shallow.shape[1] == 0:
        return loss
    B, D, C = shallow.shape
    ce = F.cross_entropy(shallow.reshape(B * D, C), labels.repeat_interleave(D))
    teacher = (deep.detach() / TAU).log_softmax(-1)[:, None].expand(B, D, C).reshape(B * D, C)
    kl = F.kl_div((shallow / TAU).log_softmax(-1).reshape(B * D, C), teacher, log_target=True, reduction="batchmean")
    features = ((pooled[:, :-1] - pooled[:, -1:].detach()) ** 2).sum(-1).mean() / pooled.shape[-1]
    return loss + (1 - ALPHA) * ce + ALPHA * TAU ** 2 * kl + MU * features


@register
class TInvMethod(TInvInference, Method):
    """Transformer⁻¹ (module docstring)."""

    name = "tinv"
    # Under torchrun every rank runs its rows of each global batch; the exits are gathered, so the episodes,
    # the complexity labels and the PPO updates are the whole batch's, the same on every rank.
    shards_itself = True
    title = "Transformer⁻¹"
    Options = TInvOptions
    knob = Knob("cost_weight", dearest=1 / 64, cheapest=8.0, curve=(0.125, 0.25, 0.5, 1.0, 2.0))

    @classmethod
    def bench_runs(cls, num_layers: int) -> list[BenchRun]:
        """Both presets, with LightGBM where it is installed (the rows' options say which)."""
        predictor = "lightgbm" if lightgbm_available() else "logistic"
        return [BenchRun(preset, {"config": preset, "predictor": predictor}) for preset in PRESETS]

    def __init__(self, model: DynamicEncoder, run: RunConfig) -> None:
        super().__init__(model, run)
        self.options: TInvOptions
        if self.options.predictor == "lightgbm" and not lightgbm_available():
            raise ValueError("--predictor lightgbm needs lightgbm (pip install -c constraints.txt '.[tinv]'), "
                             "or give --predictor logistic")
        L, E, nh = model.config.num_layers, model.config.hidden_size, model.config.num_heads
        # W (spec §3): all heads, and for tinv-w the 2/3 most important (8 of MiniLM's 12).
        self.widths = (nh,) if self.options.config == "tinv" else (nh, max(1, round(2 * nh / 3)))
        self.head_order: list[list[int]] | None = None  # per layer, heads by importance (tinv-w, from epoch 2)
        self.train_labels: list[int] = []
        self.policy = HaltingPolicy(observation_width(L), E, widths=len(self.widths))
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=3e-4)
        self.statistics_: TokenStatistics | None = None
        self.predictor = ComplexityPredictor(self.options.predictor, L)
        self.generator = torch.Generator().manual_seed(run.train.seed)
        self.buffer: list[Episodes] = []  # since the last PPO update; cleared on resume (spec §14.9)
        self.epoch_labels: dict[int, int] = {}  # training row -> first correct depth, epoch 1
        self.updates, self.total_updates, self.steps = 0, 1, 0
        self.calibration: dict[str, Any] = {}
        self.importance: dict[str, Any] = {}  # tinv-w's head-importance pass: rows, seconds, FLOPs
        self.warm_up_seconds = 0.0  # of the last fold with --buckets or --graphs
        self.layer_graphs = None  # with --graphs, the captured layers (fold)

    # --- features ------------------------------------------------------------------------
    def _mean_embedding(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        embeddings = self.model.embeddings
        return mean_embedding(embeddings.word.weight.detach(), embeddings.position.weight.detach(), input_ids, mask)

    def _features(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """The predictor's 26 standardised inputs (B, 26)."""
        return self.statistics_(input_ids, mask, self._mean_embedding(input_ids, mask))

    def _fit_statistics(self, ids: list[list[int]]) -> None:
        from dht.model import resolve_backbone

        kinds = token_kinds(resolve_backbone(self.run.backbone).tokenizer_json)
        with torch.no_grad():
            means = [self._mean_embedding(b.input_ids, b.attention_mask).cpu() for b in self._chunks(ids, 256)]
        self.statistics_ = TokenStatistics.fit(kinds, ids, torch.cat(means), self.run.train.seed)

    # --- training ------------------------------------------------------------------------
    def on_train_start(self, ids: list[list[int]], labels: list[int], pad_id: int, total_steps: int) -> None:
        self.policy.to(self.device)
        self.train_labels = labels
        if self.statistics_ is None:
            self._fit_statistics(ids)
        self.total_updates = max(1, total_steps // PPO_EVERY)

    def on_epoch_start(self, epoch: int, train_ids: list[list[int]], pad_id: int) -> None:
        """At epoch 2's start, fit the predictor on epoch 1's training-mode labels (spec §4) and, for tinv-w,
        measure head importance (spec §3)."""
        if epoch >= 1:
            self._order_heads(train_ids, pad_id)
        if epoch >= 1 and self.predictor.model is None and self.epoch_labels:
            rows = sorted(self.epoch_labels)
            features = self._row_features([train_ids[i] for i in rows])
            self.predictor.fit(features, torch.tensor([self.epoch_labels[i] for i in rows]), self.run.train.seed)
            self.epoch_labels = {}

    def _order_heads(self, ids: list[list[int]], pad_id: int) -> None:
        """tinv-w: each layer's heads by Michel et al.'s importance on seeded training rows, once, frozen
        (a moving head set would change the paths the policy learned)."""
        if len(self.widths) == 1 or self.head_order is not None:
            return
        from dht.training.operating import seeded_rows

        rows, labels = seeded_rows(ids, self.train_labels, self.run.train.seed, IMPORTANCE_ROWS)
        size = self.run.train.eval_batch_size
        batches = ((b.input_ids, b.attention_mask, b.labels) for b in self._chunks(rows, size, pad_id, labels))
        start = time.perf_counter()
        importance = head_importance(self.model, batches)
        self.head_order = [row.argsort(descending=True, stable=True).tolist() for row in importance]
        self.head_order = self.world.share(self.head_order)  # under torchrun: rank 0's, on unlike GPUs too
        self.model.train()
        config = self.model.config  # a forward and a backward (≈ 2 forwards) per row
        self.importance = {"rows": len(rows), "seconds": time.perf_counter() - start,
                           "flops": 3.0 * sum(full_forward_flops(config, len(r)) for r in rows)}

    def _row_features(self, ids: list[list[int]]) -> Tensor:
        with torch.no_grad():
            return torch.cat([self._features(b.input_ids, b.attention_mask).cpu() for b in self._chunks(ids, 256)])

    def _chunks(self, ids: list[list[int]], size: int, pad_id: int = 0,
                labels: list[int] | None = None) -> Iterator[Batch]:
        """``ids`` in their order, ``size`` rows a batch, padded (``collate``) and on the model's device."""
        for i in range(0, len(ids), size):
            rows = ids[i:i + size]
            row_labels = labels[i:i + size] if labels is not None else [0] * len(rows)
            yield collate(rows, row_labels, range(len(rows)), pad_id).to(self.device)

    def forward_exits(self, batch: Batch, width: int) -> tuple[Tensor, Tensor]:
        """All N_L layers at ``width`` heads; the shared classifier at every depth: exit logits (B, N_L, C),
        pooled (B, N_L, E)."""
        model, mask = self.model, batch.attention_mask.bool()
        h, exits, pooled = model.embed(batch.input_ids), [], []
        for index, layer in enumerate(model.layers):
            h = layer(h, mask[:, None, None, :], self.heads(index, width))
            pooled.append(model.pool(h, mask))
            exits.append(model.classifier(model.classifier_dropout(pooled[-1])))
        return torch.stack(exits, 1), torch.stack(pooled, 1)

    def episodes(self, exit_logits: Tensor, pooled: Tensor, features: Tensor, labels: Tensor, tokens: list[int],
                 cost_weight: Tensor, width: Tensor, chosen: bool) -> tuple[Episodes, Tensor]:
        """Whole counterfactual episodes from known exits (spec §7): sampled halts, §6's rewards. ``width``
        (B,) is each episode's index into ``widths``, its step-0 action: the policy's own choice when
        ``chosen`` (phase C), else fixed by the training batch and not trained (online). Returns the
        episodes and each one's halt depth (B,)."""
        L, C = exit_logits.shape[1], exit_logits.shape[2]
        exit_logits, pooled = exit_logits.detach().float(), pooled.detach().float()
        heads = [self.widths[i] for i in width.tolist()]
        obs = self.observations(exit_logits, features, tokens, cost_weight, heads)
        pooled_seq = torch.cat([torch.zeros_like(pooled[:, :1]), pooled[:, :-1]], 1)  # step t sees depth t
        actions, log_probs, values, depth = rollout(self.policy, obs, pooled_seq, self.generator,
                                                    first_action=width.to(obs.device))
        log_p = exit_logits.log_softmax(-1).gather(2, labels[:, None, None].expand(-1, L, 1)).squeeze(2)
        correct = exit_logits.argmax(-1) == labels[:, None]
        spent = self._spent(tokens, heads, exit_logits.device)
        rewards, valid = episode_rewards(log_p, correct, spent[:, 1:] - spent[:, :-1], depth, cost_weight, C, ETA)
        actor = valid.clone()
        actor[:, 0] = chosen and len(self.widths) > 1
        return Episodes(obs, pooled_seq, actions, log_probs, values, rewards, valid, actor), depth

    def observations(self, exit_logits: Tensor, features: Tensor, tokens: list[int], cost_weight: Tensor,
                     heads: list[int]) -> Tensor:
        """x_t for t = 0..N_L − 1 (without the pooled projection) of episodes at ``heads`` heads each:
        (B, N_L, D). The width input is 1 at t = 0, before the width is chosen."""
        L, nh = exit_logits.shape[1], self.model.config.num_heads
        prior = self.predictor.predict(features)
        statistics = features[:, :10]
        spent = self._spent(tokens, heads, exit_logits.device)  # (B, N_L + 1): after 0..N_L layers
        width = torch.tensor(heads, dtype=features.dtype, device=features.device) / nh
        steps = [observation(prior, statistics, cost_weight, 0, L, spent[:, 0], torch.ones_like(width), None)]
        for t in range(1, L):
            stats = exit_statistics(exit_logits[:, t - 1], exit_logits[:, t - 2] if t >= 2 else None)
            steps.append(observation(prior, statistics, cost_weight, t, L, spent[:, t], width, stats))
        return torch.stack(steps, 1)

    def _spent(self, tokens: list[int], heads: list[int], device: torch.device) -> Tensor:
        """FLOPs spent after 0..N_L layers at each sample's width, each layer with its exit, over the full
        model's: (B, N_L + 1). Consecutive differences are §6's F_{t,w} / F (plus the exit)."""
        config = self.model.config
        cache = self.__dict__.setdefault("_spent_cache", {})
        rows = []
        for t, w in zip(tokens, heads):
            if (t, w) not in cache:
                share = (layer_forward_flops(config, t, w) + classifier_flops(config)) / full_forward_flops(config, t)
                cache[t, w] = [d * share for d in range(config.num_layers + 1)]
            rows.append(cache[t, w])
        return torch.tensor(rows, device=device)

    def _cost_weights(self, n: int) -> Tensor:
        low, high = (math.log(c) for c in COST_WEIGHTS)
        return torch.exp(low + (high - low) * torch.rand(n, generator=self.generator)).to(self.device)

    def training_step(self, batch: Batch) -> StepResult:
        # tinv-w: once heads are ordered, each batch runs at a width drawn uniformly from W (spec §7).
        choice = 0
        if self.head_order is not None:
            choice = int(torch.randint(len(self.widths), (1,), generator=self.generator))
        run, own = self.world.rows_to_run(len(batch)) if self.world.distributed else (None, len(batch))
        if run is None:
            exit_logits, pooled = self.forward_exits(batch, self.widths[choice])
            loss = dual_path_loss(exit_logits, pooled, batch.labels)
        else:  # torchrun: this rank's rows (its loss their mean, 0 for a rank without rows of its own)
            part = batch.rows(run)
            local_exits, local_pooled = self.forward_exits(part, self.widths[choice])
            loss = dual_path_loss(local_exits, local_pooled, part.labels) * float(own > 0)
            exit_logits = self.world.gather(local_exits[:own], len(batch))
            pooled = self.world.gather(local_pooled[:own], len(batch))
        tokens = batch.attention_mask.sum(1).tolist()
        config, L = self.model.config, self.model.config.num_layers
        flops, full = self.train_cost(batch, self.plan(L, self.widths[choice]))
        flops += 3 * (L - 1) * classifier_flops(config) * len(tokens)  # the shallow exits, trained
        with torch.no_grad():
            if self.predictor.model is None:
                depth = first_correct_depth(exit_logits.detach(), batch.labels)
                self.epoch_labels.update(zip(batch.index.tolist(), depth.tolist()))
            features = self._features(batch.input_ids, batch.attention_mask)
            episodes, halts = self.episodes(exit_logits, pooled, features, batch.labels, tokens,
                                            self._cost_weights(len(tokens)),
                                            torch.full((len(tokens),), choice), chosen=False)
        self.buffer.append(episodes)
        self.steps += 1
        overhead = self._control_flops(tokens, steps=0) + self._episode_flops(len(tokens), replays=1)  # the rollout
        extra: dict[str, Any] = {"policy_depth": halts.float().mean().item(), "width": self.widths[choice]}
        if self.steps % PPO_EVERY == 0:
            extra |= self._ppo(Episodes.cat(self.buffer))
            overhead += self._episode_flops(sum(map(len, self.buffer)), replays=3 * 4)  # 4 epochs, forward + backward
            self.buffer = []
        return StepResult(loss, flops, full, flops + overhead, extra=extra, shard=None if run is None else own)

    def _ppo(self, episodes: Episodes, entropy_coef: float | None = None) -> dict[str, float]:
        if entropy_coef is None:
            progress = min(self.updates / self.total_updates, 1.0)
            entropy_coef = ENTROPY_COEF[0] + (ENTROPY_COEF[1] - ENTROPY_COEF[0]) * progress
        with torch.enable_grad():
            stats = ppo_update(self.policy, self.policy_optimizer, episodes, entropy_coef, self.generator)
        self.updates += 1
        return {f"ppo_{k}": v for k, v in stats.items()}

    def _control_flops(self, tokens: list[int], steps: int | list[int]) -> float:
        """Features + predictor + ``steps`` policy steps per sample (spec §8's all-in overhead)."""
        E = self.model.config.hidden_size
        per_step = self.policy.flops_per_step(observation_width(self.model.config.num_layers), E)
        counts = steps if isinstance(steps, list) else [steps] * len(tokens)
        return sum(self.statistics_.flops(t, E) + self.predictor.flops() + n * per_step
                   for t, n in zip(tokens, counts))

    def _episode_flops(self, episodes: int, replays: int) -> float:
        """A policy pass over whole episodes, ``replays`` times (3 per PPO epoch: forward and backward)."""
        L, E = self.model.config.num_layers, self.model.config.hidden_size
        return replays * episodes * L * self.policy.flops_per_step(observation_width(L), E)

    def on_train_end(self, ids: list[list[int]], labels: list[int], pad_id: int) -> None:
        self.train_labels = labels
        self._order_heads(ids, pad_id)  # a one-epoch tinv-w run has not ordered them yet
        if not self.calibration:
            self.calibration = self.calibrate(ids, labels, pad_id)

    @torch.no_grad()
    def calibrate(self, ids: list[list[int]], labels: list[int], pad_id: int) -> dict[str, Any]:
        """Phase C (spec §7): eval-mode exits of seeded training rows at every width refit the predictor
        (first correct depths at full width) and train the policy for ``CALIBRATION_ROUNDS`` PPO rounds on
        fresh rollouts of those episodes (λ drawn per episode; the width now the policy's choice). Returns
        its FLOPs, seconds and what it found."""
        from dht.training.operating import seeded_rows

        start = time.perf_counter()
        rows, row_labels = seeded_rows(ids, labels, self.run.train.seed, CALIBRATION_ROWS)
        self.model.eval()
        config, size, flops = self.model.config, self.run.train.eval_batch_size, 0.0
        per_width, features, y, tokens = [], [], [], []
        for width in self.widths:
            parts = []
            for batch in self._chunks(rows, size, pad_id):
                input_ids, mask = batch.input_ids, batch.attention_mask
                exit_logits, pooled = self.forward_exits(batch, width)
                parts.append((exit_logits, pooled))
                lengths = mask.sum(1).tolist()
                plan = self.plan(config.num_layers, width)
                flops += sum(plan_forward_flops(config, plan, t) + (config.num_layers - 1) * classifier_flops(config)
                             for t in lengths)
                if width == self.widths[0]:
                    features.append(self._features(input_ids, mask))
                    tokens += lengths
            per_width.append((torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])))
        features = torch.cat(features)
        y = torch.tensor(row_labels, device=self.device)
        depth = first_correct_depth(per_width[0][0], y)  # at full width
        self.predictor.fit(features.cpu(), depth.cpu(), self.run.train.seed)
        exits = torch.stack([w[0] for w in per_width])  # (W, N, N_L, C)
        pooled = torch.stack([w[1] for w in per_width])  # (W, N, N_L, E)
        samples = torch.arange(len(y), device=self.device)
        for _ in range(CALIBRATION_ROUNDS):
            cost_weight = self._cost_weights(len(y))
            width = self._sample_widths(features, tokens, cost_weight)
            index = width.to(self.device)
            self._ppo(self.episodes(exits[index, samples], pooled[index, samples], features, y, tokens, cost_weight,
                                    width, chosen=True)[0], entropy_coef=ENTROPY_COEF[1])
        flops += self._control_flops(tokens, steps=0)  # features and predictor, once
        flops += self._episode_flops(len(y), replays=CALIBRATION_ROUNDS * (1 + 3 * 4))  # rollouts and PPO
        flops += self.importance.get("flops", 0.0)
        return {"train_rows": len(y), "rounds": CALIBRATION_ROUNDS, "flops": flops,
                "seconds": time.perf_counter() - start, "widths": list(self.widths),
                "label_shares": torch.bincount(depth - 1, minlength=config.num_layers).div(len(y)).tolist()}

    def _sample_widths(self, features: Tensor, tokens: list[int], cost_weight: Tensor) -> Tensor:
        """Step 0's width for each episode, drawn from the policy (its observation does not depend on it)."""
        if len(self.widths) == 1:
            return torch.zeros(len(tokens), dtype=torch.long)
        L = self.model.config.num_layers
        prior = self.predictor.predict(features)
        x = observation(prior, features[:, :10], cost_weight, 0, L, features.new_zeros(len(tokens)),
                        features.new_ones(len(tokens)), None)
        logits, _, _ = self.policy.step(x, None, None, first=True)
        return sample(logits, self.generator)

    def extra_training_cost(self) -> tuple[float, float]:
        """Phase C's FLOPs and seconds, with tinv-w's head-importance pass (its FLOPs are counted in phase C's)."""
        seconds = self.calibration.get("seconds", 0.0) + self.importance.get("seconds", 0.0)
        return self.calibration.get("flops", 0.0), seconds

    # --- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"policy": {k: v.cpu() for k, v in self.policy.state_dict().items()},
                "policy_optimizer": self.policy_optimizer.state_dict(),
                "statistics": None if self.statistics_ is None else self.statistics_.state_dict(),
                "predictor": self.predictor.state_dict(),
                "epoch_labels": {str(k): v for k, v in self.epoch_labels.items()},
                "updates": self.updates, "steps": self.steps, "generator": self.generator.get_state(),
                "calibration": self.calibration, "head_order": self.head_order, "importance": self.importance}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.policy.to(self.device)
        optimizer = dict(state["policy_optimizer"])
        optimizer["state"] = {int(k): v for k, v in optimizer["state"].items()}  # JSON made the ids strings
        self.policy_optimizer.load_state_dict(optimizer)
        self.statistics_ = None if state["statistics"] is None else TokenStatistics.from_state(state["statistics"])
        self.predictor = ComplexityPredictor.from_state(state["predictor"])
        self.epoch_labels = {int(k): int(v) for k, v in state["epoch_labels"].items()}
        self.updates, self.steps = int(state["updates"]), int(state["steps"])
        self.generator.set_state(state["generator"])
        self.calibration = dict(state["calibration"])
        self.head_order = state.get("head_order")  # runs saved before tinv-w existed: depth only
        self.importance = dict(state.get("importance", {}))
        self.buffer = []

    def report(self, output) -> dict[str, Any]:
        return {"calibration": self.calibration, "predictor": {"backend": self.predictor.backend,
                                                               "flops_per_sample": self.predictor.flops()},
                "ppo_updates": self.updates, "widths": list(self.widths), "head_order": self.head_order,
                "importance": self.importance}
