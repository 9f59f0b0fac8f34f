"""Level 2 of Transformer⁻¹, the halting policy (spec §5-§6): a small recurrent actor-critic that picks a
sample's width before layer 0 and then, after each layer, HALT or CONTINUE, trained with PPO.

- ``observation``: the non-learned part of the step input x_t (spec §5): the predictor's prior, 10 token
  statistics, log₂ λ, t / N_L, the FLOPs spent, the width, five statistics of the exit at depth t, and
  the t = 0 flag. The policy adds a learned 16-dim projection of the detached pooled state.
- ``HaltingPolicy``: Linear → tanh → LSTMCell(64) → width / halt / value heads.
- ``episode_rewards``: the dense, hierarchical rewards of §6 (cost and potential-based shaping per layer,
  ±1 at the halt).
- ``rollout``: whole episodes on exits that are all known (counterfactual: one forward gives every
  depth's exit), sampled or greedy.
- ``ppo_update``: clipped PPO over whole episodes (Schulman et al., 2017), advantages by GAE
  (Schulman et al., 2016) from torchrl's ``generalized_advantage_estimate``. The clipped loss itself is
  written here: torchrl's ``ClipPPOLoss`` takes TensorDict actor modules, and an episode here is a
  recurrent pass with a different head at t = 0 and masked steps after the halt, which its modules do
  not express without wrapping all of this in them.

Dimension legend: B episodes, S = N_L steps (t = 0 .. N_L − 1), D observation width, E pooled width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONTINUE, HALT = 0, 1
HIDDEN, POOLED = 64, 16
EXIT_STATISTICS = 5  # max probability, normalised entropy, top-1 − top-2 margin, Δ max probability, agreement


def observation_width(depths: int, statistics: int = 10) -> int:
    """D: prior (N_L) + statistics + log₂ λ, t / N_L, FLOPs spent, width + exit statistics + the t = 0 flag."""
    return depths + statistics + 4 + EXIT_STATISTICS + 1


def exit_statistics(logits: Tensor, previous: Tensor | None) -> Tensor:
    """Five statistics of an exit (B, C), against the exit one depth below (None at depth 1) -> (B, 5)."""
    p = logits.float().softmax(-1)
    top = p.topk(2, -1).values
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(p.shape[-1])
    if previous is None:
        change, agree = torch.zeros_like(entropy), torch.zeros_like(entropy)
    else:
        before = previous.float().softmax(-1)
        change = top[:, 0] - before.max(-1).values
        agree = (p.argmax(-1) == before.argmax(-1)).float()
    return torch.stack([top[:, 0], entropy, top[:, 0] - top[:, 1], change, agree], 1)


def observation(prior: Tensor, statistics: Tensor, cost_weight: Tensor, step: int, depths: int, spent: Tensor,
                width: Tensor, exit_stats: Tensor | None) -> Tensor:
    """x_t without the pooled projection (spec §5): prior (B, N_L), statistics (B, 10), cost_weight λ (B,),
    spent FLOPs / full FLOPs (B,), width w / N_h (B,), exit_stats (B, 5) or None at t = 0 -> (B, D)."""
    B = prior.shape[0]
    first = exit_stats is None
    exits = prior.new_zeros(B, EXIT_STATISTICS) if first else exit_stats
    scalars = torch.stack([torch.log2(cost_weight.clamp_min(1 / 64)), prior.new_full((B,), step / depths),
                           spent, width], 1)
    return torch.cat([prior, statistics, scalars, exits, prior.new_full((B, 1), float(first))], 1)


class HaltingPolicy(nn.Module):
    """The actor-critic of spec §5: Linear(D + 16 → 64) → tanh → LSTMCell(64, 64) → width head (t = 0),
    halt head (t ≥ 1, actions CONTINUE / HALT) and value head; the pooled state enters through a learned
    Linear(E → 16)."""

    def __init__(self, inputs: int, hidden_size: int, widths: int) -> None:
        super().__init__()
        self.pooled = nn.Linear(hidden_size, POOLED)
        self.input = nn.Linear(inputs + POOLED, HIDDEN)
        self.cell = nn.LSTMCell(HIDDEN, HIDDEN)
        self.width_head = nn.Linear(HIDDEN, widths)
        self.halt_head = nn.Linear(HIDDEN, 2)
        self.value_head = nn.Linear(HIDDEN, 1)

    def step(self, x: Tensor, pooled: Tensor | None, state: tuple[Tensor, Tensor] | None,
             first: bool) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """One step: x (B, D), pooled (B, E) or None (zeros at t = 0) -> action logits (B, |W|) at t = 0 or
        (B, 2) after, values (B,), the new LSTM state."""
        projected = x.new_zeros(x.shape[0], POOLED) if pooled is None else self.pooled(pooled.detach().float())
        h, c = self.cell(torch.tanh(self.input(torch.cat([x, projected], 1))), state)
        logits = (self.width_head if first else self.halt_head)(h)
        return logits, self.value_head(h).squeeze(1), (h, c)

    def flops_per_step(self, inputs: int, hidden_size: int) -> float:
        """Forward FLOPs of one step (multiply-adds × 2), ≈ 84k for MiniLM (spec §8)."""
        heads = self.width_head.out_features + 2 + 1
        return 2.0 * (hidden_size * POOLED + (inputs + POOLED) * HIDDEN + 8 * HIDDEN * HIDDEN + HIDDEN * heads)


@dataclass
class Episodes:
    """Whole episodes, padded to S steps: what PPO needs to replay them."""

    obs: Tensor  # (B, S, D)
    pooled: Tensor  # (B, S, E); zeros at t = 0
    actions: Tensor  # (B, S) long
    log_probs: Tensor  # (B, S) of the actions taken, when they were taken
    values: Tensor  # (B, S)
    rewards: Tensor  # (B, S)
    valid: Tensor  # (B, S) bool: steps that happened
    actor: Tensor  # (B, S) bool: steps whose action the policy chose (a width fixed by training is not)

    def __len__(self) -> int:
        return self.obs.shape[0]

    def index(self, rows: Tensor) -> "Episodes":
        return Episodes(*(getattr(self, f.name)[rows] for f in fields(self)))

    @staticmethod
    def cat(parts: list["Episodes"]) -> "Episodes":
        return Episodes(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Episodes)))


def replay(policy: HaltingPolicy, obs: Tensor, pooled: Tensor) -> tuple[list[Tensor], Tensor]:
    """Run the policy over every step of the episodes: obs (B, S, D), pooled (B, S, E) -> each step's action
    logits (the width head's (B, |W|) at t = 0, the halt head's (B, 2) after) and values (B, S). Steps after
    a halt run too; callers mask them."""
    state, logits, values = None, [], []
    for t in range(obs.shape[1]):
        out, value, state = policy.step(obs[:, t], None if t == 0 else pooled[:, t], state, first=t == 0)
        logits.append(out)
        values.append(value)
    return logits, torch.stack(values, 1)


def step_log_probs(logits: list[Tensor], actions: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probabilities (B, S) of ``actions`` and entropies (B, S) of each step's distribution."""
    log_p = [F.log_softmax(out, -1) for out in logits]
    taken = torch.stack([lp.gather(1, actions[:, t:t + 1]).squeeze(1) for t, lp in enumerate(log_p)], 1)
    entropy = torch.stack([-(lp.exp() * lp).sum(-1) for lp in log_p], 1)
    return taken, entropy


@torch.no_grad()
def rollout(policy: HaltingPolicy, obs: Tensor, pooled: Tensor, generator: torch.Generator | None,
            greedy: bool = False, first_action: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Actions for whole episodes whose every observation is known: obs (B, S, D), pooled (B, S, E).
    ``first_action`` (B,) gives step 0's action (the width) instead of choosing it. Returns actions (B, S),
    their log-probabilities (B, S), values (B, S) and the halt depth (B,) in 1..S (the first t ≥ 1 whose
    action is HALT; S when none)."""
    logits, values = replay(policy, obs, pooled)
    if greedy:
        actions = torch.stack([out.argmax(-1) for out in logits], 1)
    else:
        actions = torch.stack([sample(out, generator).to(obs.device) for out in logits], 1)
    if first_action is not None:
        actions[:, 0] = first_action
    log_probs, _ = step_log_probs(logits, actions)
    return actions, log_probs, values, halt_depth(actions)


def sample(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """One action per row of logits (B, A), drawn on the CPU with ``generator`` -> (B,) long."""
    return torch.multinomial(logits.float().softmax(-1).cpu(), 1, generator=generator).squeeze(1)


def halt_depth(actions: Tensor) -> Tensor:
    """(B, S) actions -> (B,) the depth at which each sample halts: the first t ≥ 1 with HALT, else S."""
    S = actions.shape[1]
    halts = actions[:, 1:] == HALT
    first = halts.float().argmax(1) + 1
    return torch.where(halts.any(1), first, torch.full_like(first, S))


def episode_rewards(log_p_true: Tensor, correct: Tensor, layer_cost: Tensor, depth: Tensor, cost_weight: Tensor,
                    classes: int, eta: float = 0.1) -> tuple[Tensor, Tensor]:
    """Spec §6's rewards for episodes that halt at ``depth`` (B,) in 1..S.

    log_p_true (B, S): Φ_d = log p_d(y) at depths d = 1..S; correct (B, S) bool: argmax p_d = y;
    layer_cost (B, S): F_{t,w} / F of layers t = 0..S−1; cost_weight λ (B,); Φ_0 = −log C. Step t < d
    continues into layer t: r_t = −λ F_t / F + η (Φ_{t+1} − Φ_t). The halt at d < S is step d:
    r = ±1 − η Φ_d; a sample that runs every layer gets that at step S − 1 as well. The shaping terms
    telescope to −η Φ_0 over any episode (potential-based, Ng et al. 1999). Returns rewards (B, S) and the
    valid steps (B, S)."""
    B, S = log_p_true.shape
    phi = torch.cat([log_p_true.new_full((B, 1), -math.log(classes)), log_p_true.float()], 1)  # (B, S + 1)
    steps = torch.arange(S, device=depth.device)[None, :]
    d = depth[:, None]
    rewards = torch.where(steps < d, -cost_weight[:, None] * layer_cost + eta * (phi[:, 1:] - phi[:, :-1]), 0.0)
    halt_at = (depth.clamp_max(S - 1))[:, None]  # the step that carries the terminal reward
    sign = correct.float().gather(1, (depth - 1)[:, None]) * 2 - 1  # ±1 at the halt depth
    terminal = sign - eta * phi.gather(1, depth[:, None])
    rewards = rewards + torch.where(steps == halt_at, terminal, 0.0)
    return rewards, steps <= halt_at


@dataclass(frozen=True)
class PPOSettings:
    """Spec §5's PPO: clip 0.2, γ = 1, GAE λ 0.95, value coefficient 0.5, Adam 3e-4 (the optimiser's),
    gradient clip 0.5, 4 epochs of minibatches of 64 episodes, advantages normalised per update."""

    clip: float = 0.2
    gamma: float = 1.0
    gae_lambda: float = 0.95
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    epochs: int = 4
    minibatch: int = 64


def advantages(episodes: Episodes, settings: PPOSettings) -> tuple[Tensor, Tensor]:
    """GAE advantages and returns (B, S) over the valid steps (torchrl's functional estimator)."""
    from torchrl.objectives.value.functional import generalized_advantage_estimate

    valid = episodes.valid
    values = torch.where(valid, episodes.values, 0.0)
    last = valid & ~torch.cat([valid[:, 1:], torch.zeros_like(valid[:, :1])], 1)  # each episode's final step
    done = (last | ~valid)[..., None]
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1)
    advantage, returns = generalized_advantage_estimate(
        settings.gamma, settings.gae_lambda, values[..., None], next_values[..., None],
        torch.where(valid, episodes.rewards, 0.0)[..., None], done, done)
    return advantage.squeeze(-1), returns.squeeze(-1)


def ppo_update(policy: HaltingPolicy, optimizer: torch.optim.Optimizer, episodes: Episodes, entropy_coef: float,
               generator: torch.Generator, settings: PPOSettings = PPOSettings()) -> dict[str, float]:
    """Clipped PPO on whole episodes (recurrent: each minibatch replays its episodes from t = 0).
    Returns the last minibatch's losses and the number of minibatches run."""
    advantage, returns = advantages(episodes, settings)
    acted = episodes.actor
    mean, std = advantage[acted].mean(), advantage[acted].std().clamp_min(1e-8)
    advantage = (advantage - mean) / std
    stats, minibatches = {}, 0
    for _ in range(settings.epochs):
        order = torch.randperm(len(episodes), generator=generator).to(acted.device)
        for start in range(0, len(episodes), settings.minibatch):
            rows = order[start:start + settings.minibatch]
            part = episodes.index(rows)
            logits, values = replay(policy, part.obs, part.pooled)
            log_probs, entropy = step_log_probs(logits, part.actions)
            mask, actor = part.valid.float(), part.actor.float()
            count, actions_taken = mask.sum().clamp_min(1), actor.sum().clamp_min(1)
            ratio = (log_probs - part.log_probs).exp()
            gain = advantage[rows]
            surrogate = torch.minimum(ratio * gain, ratio.clamp(1 - settings.clip, 1 + settings.clip) * gain)
            policy_loss = -(surrogate * actor).sum() / actions_taken
            value_loss = ((values - returns[rows]) ** 2 * mask).sum() / count
            entropy_mean = (entropy * actor).sum() / actions_taken
            loss = policy_loss + settings.value_coef * value_loss - entropy_coef * entropy_mean
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), settings.max_grad_norm)
            optimizer.step()
            minibatches += 1
            stats = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                     "entropy": entropy_mean.item()}
    return {**stats, "minibatches": minibatches}
