"""Rewards of the bandits (spec §4; paper §4.3, Eqs. 10-15).

Every decision is scored by a cost δ = loss × (what it spent): δ_L = loss·L for UCB_L,
δ_H = loss·L·H_o for UCB_H, δ_cp = loss·L·H for UCB_cp. Its reward compares δ with the mean δ of
the previous released batch: r = scale · mean(δ_prev) / δ, clipped to [0, r_max]; lower loss or a
cheaper network earns more. TSB's reward is binary: 1 when that ratio (before scaling) is > 1, i.e.
the choice was more effective than the previous batch's on average. (The paper's Eq. 15 prints the
inverse; its text says 1 = more effective, which is what we follow.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


def cost(loss: Tensor, *factors: Tensor | float) -> Tensor:
    """δ = loss · L (· H): per-sample loss (B,) times the sizes the decision chose (Eqs. 10, 12, 13)."""
    delta = loss.detach().double()
    for factor in factors:
        delta = delta * (factor.double() if isinstance(factor, Tensor) else float(factor))
    return delta


def ratio(delta: Tensor, previous_mean: float) -> Tensor:
    """mean(δ of the previous batch) / δ for each sample (B,), the unscaled reward."""
    return previous_mean / delta.clamp_min(1e-12)


def ratio_reward(delta: Tensor, previous_mean: float, scale: float, r_max: float) -> Tensor:
    """r = scale · mean(δ_prev) / δ, clipped to [0, r_max] (Eqs. 11, 14, 15)."""
    return (scale * ratio(delta, previous_mean)).clamp(0.0, r_max)


def binary_reward(delta: Tensor, previous_mean: float) -> Tensor:
    """TSB's reward: 1.0 where mean(δ_prev) / δ > 1 (more effective than the previous batch), else 0.0."""
    return (ratio(delta, previous_mean) > 1.0).double()


@dataclass
class PreviousBatch:
    """Mean δ of the previous released batch, per named decision (the reward baseline)."""

    means: dict[str, float] = field(default_factory=dict)

    def baseline(self, name: str, delta: Tensor) -> float:
        """The previous batch's mean δ for ``name``; the current batch's mean for the first batch."""
        return self.means.get(name, float(delta.mean()))

    def remember(self, name: str, delta: Tensor) -> None:
        self.means[name] = float(delta.mean())

    def state_dict(self) -> dict[str, float]:
        return dict(self.means)

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.means = {k: float(v) for k, v in state.items()}
