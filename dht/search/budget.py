"""A training-time compute target for DHT (ours; issue 23): a cost weight adapted online, Lagrangian-style.

The paper's bandits settle on whatever mix of arms their rewards favour, so a run's inference FLOP ratio
is known only after training. With a target R, the top bandit's choice in training and at inference
subtracts λ·c_a from each arm's score (c_a: the arm's share of the full model's forward FLOPs, as the
inference knob ``cost_weight`` does), and after each loader batch λ takes a dual-ascent step on the
constraint "the greedy arms' mean share = R":

    λ ← λ + η · (mean_i c_{a_i} − R)

where a_i is sample i's greedy choice (no exploration bonus) under the current λ, the choice inference
will make. λ may go negative: a run under its target is pushed to deeper arms. The rewards stay the
paper's (§4), so the bandits keep learning each arm's loss-for-cost trade-off and λ only shifts the
choice. η = 5 reward units per full model per batch: the rewards lie in [0, r_max = 10] and the
measured knob moved F-DHT from 0.55 to 0.34 of the FLOPs between λ = 0 and λ = 50 (docs/front.md), so a
gap of 0.2 crosses that range in 50 of an epoch's 331 batches (AG News, batch 32), while one batch's
noise (a few hundredths of cost) moves λ by a few tenths.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

STEP = 5.0  # η
# |λ| stays within the inference knob's range (DHTMethod.knob): beyond it every arm list is at one end,
# and a target no arm mix can meet (below the cheapest arm's share) must not drive λ without end.
LIMIT = 1000.0


@dataclass
class CostWeight:
    """λ of the training-time target R (``target``, a share of the full model's forward FLOPs)."""

    target: float
    value: float = 0.0  # λ
    step: float = STEP  # η

    def update(self, shares: Tensor) -> float:
        """One dual-ascent step from the chosen arms' shares (B,), λ kept within ±``LIMIT``; returns λ."""
        self.value = min(LIMIT, max(-LIMIT, self.value + self.step * (float(shares.mean()) - self.target)))
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"target": self.target, "value": self.value, "step": self.step}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.target, self.value, self.step = float(state["target"]), float(state["value"]), float(state["step"])
