"""Transformer⁻¹ (Ji et al., 2025; ``../shared/spec/transformer_inverse.md``, preset ``tinv``: depth only):
a complexity predictor and a recurrent PPO policy choose, per sample, after each layer, whether to halt.

- Phase A (§7): every step runs all N_L layers; the shared classifier reads every depth, and the deep
  exit teaches the shallow ones through logits and pooled features (``dual_path_loss``). On the same
  forward each sample yields a whole counterfactual episode for the policy (``episodes``); PPO updates
  every ``PPO_EVERY`` steps. At the start of epoch 2 the predictor is fitted on epoch 1's labels.
- Phase C (§7, ``calibrate``): after the last step, eval-mode exits of 4,096 training rows refit the
  predictor and train the policy for 20 more PPO rounds; counted in the all-in training cost.
- Inference (§8, ``halting_predict``): layer by layer on the folded stack, the samples still running
  compacted after each halt. Controllers (``--controller``): ``policy`` (``--cost-weight λ``, the
  ``--budget`` knob), ``predictor`` alone (halt once P(c(x) ≤ d) ≥ ``--predictor-quantile``) and
  ``entropy`` (BL3's exit rule on the same exits, ``--entropy-threshold``). The oracles of §9 are
  ``dht evaluate --oracle`` over the fixed depths.

``--buckets`` pads the running samples up to fixed shapes (warmed up at load) and ``--compile`` compiles the
folded layer (spec §11). Not built yet (docs/tinv.md): the width preset ``tinv-w`` and head importance, and
CUDA graphs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

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
    HALT,
    Episodes,
    HaltingPolicy,
    episode_rewards,
    exit_statistics,
    observation,
    observation_width,
    ppo_update,
    rollout,
)
from dht.data import Batch
from dht.flops import classifier_flops, full_forward_flops, full_train_flops, layer_forward_flops, plan_forward_flops
from dht.model import DynamicEncoder, ExecutionPlan
from dht.model.folding import FoldedStack, folded_layer
from dht.search.exits import normalised_entropy
from dht.training.config import RunConfig
from dht.training.hooks import BenchRun, Knob, Method, Prediction, StepResult, register
from dht.training.options import MethodOptions, option

PPO_EVERY = 8  # training steps per PPO update (256 episodes at batch 32)
CALIBRATION_ROWS, CALIBRATION_ROUNDS = 4096, 20
COST_WEIGHTS = (1 / 8, 2.0)  # λ is drawn log-uniformly in this range per training episode
ALPHA, TAU, MU, ETA = 0.5, 2.0, 1.0, 0.1  # dual-path distillation (§7) and reward shaping (§6)
ENTROPY_COEF = (0.01, 0.001)  # PPO's entropy bonus, linearly from the first to the last update
CONTROLLERS = ("policy", "predictor", "entropy")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # spec §11: the running samples are padded up to one of these
LENGTH_BUCKETS = (16, 32, 48, 64, 96, 128)  # and their tokens up to one of these


@dataclass(frozen=True)
class TInvOptions(MethodOptions):
    """Transformer⁻¹'s settings (spec §13)."""

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
    compile: bool = option(False, "torch.compile the folded layer, once per length (slow to compile on a CPU)",
                           inference=True)

    def __post_init__(self) -> None:
        if self.predictor not in ("lightgbm", "logistic"):
            raise ValueError(f"--predictor must be lightgbm or logistic, got {self.predictor!r}")
        if self.controller not in CONTROLLERS:
            raise ValueError(f"--controller must be one of {', '.join(CONTROLLERS)}, got {self.controller!r}")
        if not self.cost_weight >= 0:
            raise ValueError(f"--cost-weight must be >= 0, got {self.cost_weight}")
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
class TInvMethod(Method):
    """Transformer⁻¹ (module docstring)."""

    name = "tinv"
    title = "Transformer⁻¹"
    Options = TInvOptions
    knob = Knob("cost_weight", dearest=1 / 64, cheapest=8.0, curve=(0.125, 0.25, 0.5, 1.0, 2.0))

    @classmethod
    def bench_runs(cls, num_layers: int) -> list[BenchRun]:
        """The depth-only preset, with LightGBM where it is installed (the row's options say which)."""
        return [BenchRun("tinv", {"predictor": "lightgbm" if lightgbm_available() else "logistic"})]

    def __init__(self, model: DynamicEncoder, run: RunConfig) -> None:
        super().__init__(model, run)
        self.options: TInvOptions
        if self.options.predictor == "lightgbm" and not lightgbm_available():
            raise ValueError("--predictor lightgbm needs lightgbm (pip install -c constraints.txt '.[tinv]'), "
                             "or give --predictor logistic")
        L, E = model.config.num_layers, model.config.hidden_size
        self.policy = HaltingPolicy(observation_width(L), E, widths=1)
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=3e-4)
        self.statistics_: TokenStatistics | None = None
        self.predictor = ComplexityPredictor(self.options.predictor, L)
        self.generator = torch.Generator().manual_seed(run.train.seed)
        self.buffer: list[Episodes] = []  # since the last PPO update; cleared on resume (spec §14.9)
        self.epoch_labels: dict[int, int] = {}  # training row -> first correct depth, epoch 1
        self.updates, self.total_updates, self.steps = 0, 1, 0
        self.calibration: dict[str, Any] = {}
        self.warm_up_seconds = 0.0  # of the last fold with --buckets

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
            means = [self._mean_embedding(*_padded(ids[i:i + 256], self.device)).cpu() for i in range(0, len(ids), 256)]
        self.statistics_ = TokenStatistics.fit(kinds, ids, torch.cat(means), self.run.train.seed)

    # --- training ------------------------------------------------------------------------
    def on_train_start(self, ids: list[list[int]], labels: list[int], pad_id: int, total_steps: int) -> None:
        self.policy.to(self.device)
        if self.statistics_ is None:
            self._fit_statistics(ids)
        self.total_updates = max(1, total_steps // PPO_EVERY)

    def on_epoch_start(self, epoch: int, train_ids: list[list[int]], pad_id: int) -> None:
        """At epoch 2's start, fit the predictor on epoch 1's training-mode labels (spec §4)."""
        if epoch >= 1 and self.predictor.model is None and self.epoch_labels:
            rows = sorted(self.epoch_labels)
            features = self._row_features([train_ids[i] for i in rows])
            self.predictor.fit(features, torch.tensor([self.epoch_labels[i] for i in rows]), self.run.train.seed)
            self.epoch_labels = {}

    def _row_features(self, ids: list[list[int]]) -> Tensor:
        with torch.no_grad():
            return torch.cat([self._features(*_padded(ids[i:i + 256], self.device)).cpu()
                              for i in range(0, len(ids), 256)])

    def forward_exits(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """All N_L layers; the shared classifier at every depth: exit logits (B, N_L, C), pooled (B, N_L, E)."""
        model, mask = self.model, batch.attention_mask.bool()
        everything = tuple(range(model.config.num_heads))
        h, exits, pooled = model.embed(batch.input_ids), [], []
        for layer in model.layers:
            h = layer(h, mask[:, None, None, :], everything)
            pooled.append(model.pool(h, mask))
            exits.append(model.classifier(model.classifier_dropout(pooled[-1])))
        return torch.stack(exits, 1), torch.stack(pooled, 1)

    def episodes(self, exit_logits: Tensor, pooled: Tensor, features: Tensor, labels: Tensor, tokens: list[int],
                 cost_weight: Tensor) -> tuple[Episodes, Tensor]:
        """Whole counterfactual episodes from known exits (spec §7): sampled actions, §6's rewards.
        Returns the episodes and each one's halt depth (B,)."""
        L, C = exit_logits.shape[1], exit_logits.shape[2]
        exit_logits, pooled = exit_logits.detach().float(), pooled.detach().float()
        obs = self.observations(exit_logits, features, tokens, cost_weight)
        pooled_seq = torch.cat([torch.zeros_like(pooled[:, :1]), pooled[:, :-1]], 1)  # step t sees depth t
        actions, log_probs, values, depth = rollout(self.policy, obs, pooled_seq, self.generator)
        log_p = exit_logits.log_softmax(-1).gather(2, labels[:, None, None].expand(-1, L, 1)).squeeze(2)
        correct = exit_logits.argmax(-1) == labels[:, None]
        layer_cost = self._layer_costs(tokens, exit_logits.device)
        rewards, valid = episode_rewards(log_p, correct, layer_cost, depth, cost_weight, C, ETA)
        return Episodes(obs, pooled_seq, actions, log_probs, values, rewards, valid), depth

    def observations(self, exit_logits: Tensor, features: Tensor, tokens: list[int], cost_weight: Tensor) -> Tensor:
        """x_t for t = 0..N_L − 1 (without the pooled projection): (B, N_L, D)."""
        L = exit_logits.shape[1]
        prior = self.predictor.predict(features)
        statistics = features[:, :10]
        spent = self._spent(tokens, exit_logits.device)  # (B, N_L + 1): after 0..N_L layers
        width = features.new_ones(len(tokens))
        steps = [observation(prior, statistics, cost_weight, 0, L, spent[:, 0], width, None)]
        for t in range(1, L):
            stats = exit_statistics(exit_logits[:, t - 1], exit_logits[:, t - 2] if t >= 2 else None)
            steps.append(observation(prior, statistics, cost_weight, t, L, spent[:, t], width, stats))
        return torch.stack(steps, 1)

    def _layer_costs(self, tokens: list[int], device: torch.device) -> Tensor:
        """F_t / F for each layer t (all layers alike at full width): (B, N_L)."""
        config = self.model.config
        share = [layer_forward_flops(config, t, config.num_heads) / full_forward_flops(config, t) for t in tokens]
        return torch.tensor(share, device=device)[:, None].expand(-1, config.num_layers)

    def _spent(self, tokens: list[int], device: torch.device) -> Tensor:
        """FLOPs spent after 0..N_L layers (each with its exit) over the full model's: (B, N_L + 1)."""
        config = self.model.config
        rows = [[d * (layer_forward_flops(config, t, config.num_heads) + classifier_flops(config))
                 / full_forward_flops(config, t) for d in range(config.num_layers + 1)] for t in tokens]
        return torch.tensor(rows, device=device)

    def _cost_weights(self, n: int) -> Tensor:
        low, high = (math.log(c) for c in COST_WEIGHTS)
        return torch.exp(low + (high - low) * torch.rand(n, generator=self.generator)).to(self.device)

    def training_step(self, batch: Batch) -> StepResult:
        exit_logits, pooled = self.forward_exits(batch)
        loss = dual_path_loss(exit_logits, pooled, batch.labels)
        tokens = batch.attention_mask.sum(1).tolist()
        config, L = self.model.config, self.model.config.num_layers
        full = sum(full_train_flops(config, t) for t in tokens)
        flops = full + 3 * (L - 1) * classifier_flops(config) * len(tokens)  # the shallow exits, trained
        with torch.no_grad():
            if self.predictor.model is None:
                depth = first_correct_depth(exit_logits.detach(), batch.labels)
                self.epoch_labels.update(zip(batch.index.tolist(), depth.tolist()))
            features = self._features(batch.input_ids, batch.attention_mask)
            episodes, halts = self.episodes(exit_logits, pooled, features, batch.labels, tokens,
                                            self._cost_weights(len(tokens)))
        self.buffer.append(episodes)
        self.steps += 1
        overhead = self._control_flops(tokens, steps=L) + self._episode_flops(len(tokens), replays=1)
        extra: dict[str, Any] = {"policy_depth": halts.float().mean().item()}
        if self.steps % PPO_EVERY == 0:
            extra |= self._ppo(Episodes.cat(self.buffer))
            overhead += self._episode_flops(sum(map(len, self.buffer)), replays=3 * 4)  # 4 epochs, forward + backward
            self.buffer = []
        return StepResult(loss, flops, full, flops + overhead, extra=extra)

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
        if not self.calibration:
            self.calibration = self.calibrate(ids, labels, pad_id)

    @torch.no_grad()
    def calibrate(self, ids: list[list[int]], labels: list[int], pad_id: int) -> dict[str, Any]:
        """Phase C (spec §7): eval-mode exits of seeded training rows refit the predictor (their first
        correct depths) and train the policy for ``CALIBRATION_ROUNDS`` PPO rounds on fresh rollouts of
        those episodes (λ drawn per episode). Returns its FLOPs, seconds and what it found."""
        from dht.training.operating import seeded_rows

        start = time.perf_counter()
        rows, row_labels = seeded_rows(ids, labels, self.run.train.seed, CALIBRATION_ROWS)
        self.model.eval()
        parts, flops = [], 0.0
        config = self.model.config
        for i in range(0, len(rows), self.run.train.eval_batch_size):
            input_ids, mask = _padded(rows[i:i + self.run.train.eval_batch_size], self.device, pad_id)
            y = torch.tensor(row_labels[i:i + len(input_ids)], device=self.device)
            batch = Batch(input_ids, mask, y, torch.arange(len(input_ids), device=self.device))
            exit_logits, pooled = self.forward_exits(batch)
            tokens = mask.sum(1).tolist()
            flops += sum(full_forward_flops(config, t) + (config.num_layers - 1) * classifier_flops(config)
                         for t in tokens)
            parts.append((exit_logits.cpu(), pooled.cpu(), self._features(input_ids, mask).cpu(), y.cpu(), tokens))
        exit_logits, pooled, features, y = (torch.cat([p[k] for p in parts]) for k in range(4))
        tokens = [t for p in parts for t in p[4]]
        depth = first_correct_depth(exit_logits, y)
        self.predictor.fit(features, depth, self.run.train.seed)
        device = self.device
        exit_logits, pooled, features, y = exit_logits.to(device), pooled.to(device), features.to(device), y.to(device)
        for _ in range(CALIBRATION_ROUNDS):
            episodes, _ = self.episodes(exit_logits, pooled, features, y, tokens, self._cost_weights(len(y)))
            self._ppo(episodes, entropy_coef=ENTROPY_COEF[1])
        flops += self._control_flops(tokens, steps=config.num_layers) * CALIBRATION_ROUNDS
        flops += self._episode_flops(len(y), replays=CALIBRATION_ROUNDS * (1 + 3 * 4))
        return {"train_rows": len(y), "rounds": CALIBRATION_ROUNDS, "flops": flops,
                "seconds": time.perf_counter() - start,
                "label_shares": torch.bincount(depth - 1, minlength=config.num_layers).div(len(y)).tolist()}

    def extra_training_cost(self) -> tuple[float, float]:
        return self.calibration.get("flops", 0.0), self.calibration.get("seconds", 0.0)

    # --- inference -----------------------------------------------------------------------
    def predict_batches(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, Prediction]]:
        self.model.eval()
        self.policy.to(self.device)
        folded = self.fold()
        for batch in batches:
            yield batch, self.halting_predict(batch, folded)

    def fold(self) -> FoldedStack:
        """The folded layers, rebuilt when the layers' weights changed (training updates them in place);
        with ``--buckets``, every shape bucket is run once first (oneDNN builds its kernels per shape), and
        the seconds that takes are kept in ``warm_up_seconds``."""
        key = (tuple((p.data_ptr(), p._version) for p in self.model.layers.parameters()), self.options.buckets)
        if getattr(self, "_folded", None) is not None and self._folded[0] == key:
            return self._folded[1]
        folded = FoldedStack(self.model)
        self._folded = (key, folded)
        self.warm_up_seconds = 0.0
        if self.options.buckets:
            start = time.perf_counter()
            E, nh = self.model.config.hidden_size, self.model.config.num_heads
            with torch.no_grad():
                for B in BATCH_BUCKETS:
                    for T in LENGTH_BUCKETS:
                        h = torch.zeros(B, T, E, device=self.device)
                        self._run_layer(folded, h, torch.ones(B, T, dtype=torch.bool, device=self.device), 0, nh)
            self.warm_up_seconds = time.perf_counter() - start
        return folded

    def _run_layer(self, folded: FoldedStack, h: Tensor, mask: Tensor, layer: int, width: int) -> Tensor:
        """One folded layer on the running samples, padded up to their shape bucket with ``--buckets``
        (padded rows attend to their first token only; padded rows and tokens are cut off again)."""
        n, T = h.shape[:2]
        if self.options.buckets:
            B_b, T_b = bucket(n, BATCH_BUCKETS), bucket(T, LENGTH_BUCKETS)
            padded = h.new_zeros(B_b, T_b, h.shape[2])
            padded[:n, :T] = h
            padded_mask = mask.new_zeros(B_b, T_b)
            padded_mask[:n, :T] = mask
            padded_mask[n:, 0] = True
            h, mask = padded, padded_mask
        layer_fn = folded_layer
        if self.options.compile:
            if getattr(self, "_compiled", None) is None:
                # One artefact per length (bucket), the batch dimension dynamic (spec §11); a batch of one is
                # specialised apart by dynamo, hence two per length.
                torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit,
                                                           2 * len(LENGTH_BUCKETS) + 2)
                self._compiled = torch.compile(folded_layer, dynamic=False)
            layer_fn = self._compiled
            if h.shape[0] > 1:
                torch._dynamo.mark_dynamic(h, 0)
                torch._dynamo.mark_dynamic(mask, 0)
        out = layer_fn(h, mask[:, None, None, :], folded.weights(layer, width), folded.head_dim, folded.eps)
        return out[:n, :T]

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        return next(iter(self.predict_batches([batch])))[1]

    @torch.no_grad()
    def halting_predict(self, batch: Batch, folded: FoldedStack) -> Prediction:
        """Spec §8: layer by layer, each sample halting when its controller says so; the samples still
        running are compacted (and their padding trimmed) after every layer."""
        model, o = self.model, self.options
        config, L, nh = model.config, model.config.num_layers, model.config.num_heads
        mask = batch.attention_mask.bool()
        T = int(mask.sum(1).max())
        input_ids, mask = batch.input_ids[:, :T], mask[:, :T]
        B = len(input_ids)
        tokens = mask.sum(1).tolist()
        logits = torch.empty(B, config.num_classes, device=input_ids.device)
        depth = torch.full((B,), L, dtype=torch.long)
        features = self._features(input_ids, mask)
        prior = self.predictor.predict(features)
        cost_weight = features.new_full((B,), o.cost_weight)
        spent = self._spent(tokens, input_ids.device)
        width = features.new_ones(B)
        state = None
        if o.controller == "policy":
            x = observation(prior, features[:, :10], cost_weight, 0, L, spent[:, 0], width, None)
            _, _, state = self.policy.step(x, None, None, first=True)
        needed = (prior.cumsum(1) >= o.predictor_quantile).float().argmax(1) + 1  # predictor: halt depth
        active = torch.arange(B, device=input_ids.device)
        h, previous = model.embed(input_ids), None
        for t in range(L):
            h = self._run_layer(folded, h, mask, t, nh)
            exit_logits = model.classifier(model.pool(h, mask))
            if t == L - 1:
                logits[active] = exit_logits
                break
            if o.controller == "policy":
                rows = active
                x = observation(prior[rows], features[rows, :10], cost_weight[rows], t + 1, L, spent[rows, t + 1],
                                width[rows], exit_statistics(exit_logits, previous))
                out, _, state = self.policy.step(x, model.pool(h, mask), state, first=False)
                halt = out.argmax(-1) == HALT
            elif o.controller == "predictor":
                halt = needed[active] <= t + 1
            else:
                halt = normalised_entropy(exit_logits) < o.entropy_threshold
            logits[active[halt]] = exit_logits[halt]
            depth[active[halt].cpu()] = t + 1
            if halt.all():
                break
            keep = ~halt
            active, h, mask, previous = active[keep], h[keep], mask[keep], exit_logits[keep]
            state = None if state is None else (state[0][keep], state[1][keep])
            width_T = int(mask.sum(1).max())
            h, mask = h[:, :width_T], mask[:, :width_T]
        return self._halting_prediction(logits, depth.tolist(), tokens)

    def _halting_prediction(self, logits: Tensor, depth: list[int], tokens: list[int]) -> Prediction:
        """Per sample: d layers and the exit read at each depth passed (paper-style); all-in adds the
        controller's features, predictor and policy steps (d + 1, or N_L)."""
        config, L, controller = self.model.config, self.model.config.num_layers, self.options.controller
        flops = [plan_forward_flops(config, ExecutionPlan.first(d, config.num_heads), t, classify=False)
                 + d * classifier_flops(config) for d, t in zip(depth, tokens)]
        all_in = list(flops)
        if controller != "entropy":
            steps = [min(d + 1, L) if controller == "policy" else 0 for d in depth]
            all_in = [f + self._control_flops([t], [n]) for f, t, n in zip(flops, tokens, steps)]
        full = [full_forward_flops(config, t) for t in tokens]
        as_tensor = lambda values: torch.tensor(values, dtype=torch.float64)
        return Prediction(logits, as_tensor(flops), as_tensor(full), as_tensor(all_in),
                          routes=[f"{d}L{config.num_heads}H" for d in depth])

    def fixed_routes(self) -> list[str]:
        """Halting after 1, 2, ..., N_L layers."""
        config = self.model.config
        return [f"{d}L{config.num_heads}H" for d in range(1, config.num_layers + 1)]

    @torch.no_grad()
    def predict_route_batches(self, batches: Iterable[Batch], route: str) -> Iterator[tuple[Batch, Prediction]]:
        """Every sample exits after the route's depth through the shared classifier."""
        self.model.eval()
        config, d = self.model.config, int(route.split("L")[0])
        plan = ExecutionPlan.first(d, config.num_heads)
        for batch in batches:
            logits = self.model(batch.input_ids, batch.attention_mask, plan)
            tokens = batch.attention_mask.sum(1).tolist()
            flops = torch.tensor([plan_forward_flops(config, plan, t) for t in tokens], dtype=torch.float64)
            full = torch.tensor([full_forward_flops(config, t) for t in tokens], dtype=torch.float64)
            yield batch, Prediction(logits, flops, full, routes=[route] * len(tokens))

    # --- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"policy": {k: v.cpu() for k, v in self.policy.state_dict().items()},
                "policy_optimizer": self.policy_optimizer.state_dict(),
                "statistics": None if self.statistics_ is None else self.statistics_.state_dict(),
                "predictor": self.predictor.state_dict(),
                "epoch_labels": {str(k): v for k, v in self.epoch_labels.items()},
                "updates": self.updates, "steps": self.steps, "generator": self.generator.get_state(),
                "calibration": self.calibration}

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
        self.buffer = []

    def report(self, output) -> dict[str, Any]:
        return {"calibration": self.calibration, "predictor": {"backend": self.predictor.backend,
                                                               "flops_per_sample": self.predictor.flops()},
                "ppo_updates": self.updates}


def bucket(size: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds ``size``; ``size`` itself beyond the largest."""
    return next((b for b in buckets if b >= size), size)


def _padded(rows: list[list[int]], device: torch.device, pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Token id rows -> ids (B, T) padded with ``pad_id`` and the bool mask (B, T), on ``device``."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows], device=device)
    return ids, mask
