"""Tree search and integrated search (spec §2; Alg. 2 lines 3-6 and 10-12; rewards Eqs. 10-15).

Both modes pick each sample's arm with one LinUCB over w = [x; z_arm] (UCB_L over depths in tree
search, UCB_cp over (L, H) pairs in integrated search) and the heads of every group with TSB. They
differ in three places, one method each here:

- ``head_counts``: how many heads each group keeps, H_o. Tree search asks UCB_H at every group start
  (Alg. 2 line 11), integrated search reads H from the arm.
- ``top_cost``: the top bandit's cost δ. Tree search counts layers, δ_L = loss·L (Eq. 10), scaled by
  α; integrated search counts layers and heads, δ_cp = loss·L·H (Eq. 14), scaled by β_cp.
- ``group_rewards``: tree search rewards UCB_H with r_H on δ_H = loss·L·H_o (Eqs. 12-13) and gives TSB
  the binary reward on δ_H; integrated search gives TSB the binary reward on δ_cp (Eq. 15).

Dimension legend: B samples, A options of a bandit, N_h heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dht.bandits import LinUCB, LinUCBConfig
from dht.flops import linucb_flops
from dht.search.arms import Arm, SearchConfig
from dht.search.features import HEAD_COUNT_DIM, Contexts, with_arm_features
from dht.search.rewards import PreviousBatch, binary_reward, cost, ratio_reward


@dataclass
class GroupDecision:
    """What one group of c layers chose for a batch (Alg. 2 lines 10-12), kept for its rewards."""

    W_ts: Tensor  # (B, N_h, D_ts) float64: TSB's vectors [x_head; z_head]
    kept: Tensor  # (B, N_h) bool: the heads TSB kept
    H: Tensor  # (B,) long: H_o, heads kept per sample
    W_h: Tensor | None = None  # (B, A, D_h) float64: UCB_H's vectors (tree search)
    choice: Tensor | None = None  # (B,) long: UCB_H's option per sample (tree search)

    @staticmethod
    def join(parts: list[GroupDecision], order: Tensor) -> GroupDecision:
        """One decision from the same group's decisions on row chunks, rows put back by ``order``."""
        def cat(name: str) -> Tensor | None:
            values = [getattr(part, name) for part in parts]
            return None if values[0] is None else torch.cat(values)[order]
        return GroupDecision(cat("W_ts"), cat("kept"), cat("H"), cat("W_h"), cat("choice"))


class SearchStrategy:
    """What a search mode decides; the DHT method calls these at the points of Algorithm 2."""

    top_name = ""  # the top bandit's name: its reward baseline in PreviousBatch, and its record key

    def __init__(self, search: SearchConfig) -> None:
        self.search = search

    def head_counts(self, group: int, h: Tensor, mask: Tensor, arms: list[Arm], contexts: Contexts,
                    z_head_count: Tensor, greedy: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """H_o per sample (B,) for group ``group`` starting from states h (B, T, E), with UCB_H's
        vectors (B, A, D_h) and choices (B,) where a bandit chose (None otherwise)."""
        raise NotImplementedError

    def top_cost(self, losses: Tensor, arms: list[Arm]) -> tuple[Tensor, float]:
        """The top bandit's per-sample cost δ (B,) float64 and its reward scale."""
        raise NotImplementedError

    def group_rewards(self, group: int, decision: GroupDecision, losses: Tensor, arms: list[Arm],
                      delta_top: Tensor, baseline_top: float, previous: PreviousBatch) -> dict[str, Tensor]:
        """The rewards (B,) of one group's decisions, by name (TSB's is ``ts{group}``); updates the
        mode's own group bandits."""
        raise NotImplementedError

    def bandit_flops(self, batch: int, groups: int) -> float:
        """FLOPs of the bandits this mode adds to a training step beyond UCB_top and TSB."""
        return 0.0

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class IntegratedSearch(SearchStrategy):
    """S-, F- and P-DHT: UCB_cp picks (L, H) per sample; every group keeps the arm's H heads."""

    top_name = "cp"

    def head_counts(self, group: int, h: Tensor, mask: Tensor, arms: list[Arm], contexts: Contexts,
                    z_head_count: Tensor, greedy: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """H_o is the arm's H (Alg. 2 line 6 chose it); no bandit runs here."""
        return torch.tensor([arm.heads for arm in arms]), None, None

    def top_cost(self, losses: Tensor, arms: list[Arm]) -> tuple[Tensor, float]:
        """δ_cp = loss·L·H (Eq. 14) and its reward scale β_cp."""
        L = torch.tensor([arm.depth for arm in arms], dtype=torch.float64)
        return cost(losses, L, torch.tensor([arm.heads for arm in arms])), self.search.beta_cp

    def group_rewards(self, group: int, decision: GroupDecision, losses: Tensor, arms: list[Arm],
                      delta_top: Tensor, baseline_top: float, previous: PreviousBatch) -> dict[str, Tensor]:
        """TSB's binary reward on δ_cp against the previous batch (Eq. 15)."""
        return {f"ts{group}": binary_reward(delta_top, baseline_top)}


class TreeSearch(SearchStrategy):
    """T-DHT: UCB_L picks L per sample; at each group start UCB_H picks how many heads (Alg. 2 line 11)."""

    top_name = "L"

    def __init__(self, search: SearchConfig) -> None:
        super().__init__(search)
        # One-hot of the group index o appended to UCB_H's vector: at most this many groups.
        self.groups_max = (search.num_layers - search.b) // search.c + 1
        dim = 2 * HEAD_COUNT_DIM + self.groups_max  # [x; z_H; one-hot(o)]
        self.ucb_h = LinUCB(LinUCBConfig(len(search.head_options), dim, alpha=search.explore, lam=search.lam))

    def head_counts(self, group: int, h: Tensor, mask: Tensor, arms: list[Arm], contexts: Contexts,
                    z_head_count: Tensor, greedy: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Alg. 2 line 11: UCB_H picks H_o for each sample from the group-start context."""
        one_hot = torch.zeros(self.groups_max, dtype=torch.float64)
        one_hot[group] = 1.0
        W_h = with_arm_features(contexts.x_head_count(h, mask), z_head_count, one_hot)
        choice = self.ucb_h.select(W_h, greedy=greedy)
        return torch.tensor(self.search.head_options)[choice], W_h, choice

    def top_cost(self, losses: Tensor, arms: list[Arm]) -> tuple[Tensor, float]:
        """δ_L = loss·L (Eq. 10) and its reward scale α."""
        return cost(losses, torch.tensor([arm.depth for arm in arms], dtype=torch.float64)), self.search.alpha

    def group_rewards(self, group: int, decision: GroupDecision, losses: Tensor, arms: list[Arm],
                      delta_top: Tensor, baseline_top: float, previous: PreviousBatch) -> dict[str, Tensor]:
        """r_H = β₁·mean(δ_H,prev)/δ_H updates UCB_H (Eqs. 12-13); TSB's binary reward on δ_H."""
        L = torch.tensor([arm.depth for arm in arms], dtype=torch.float64)
        delta = cost(losses, L, decision.H)
        name = f"H{group}"
        baseline = previous.baseline(name, delta)
        r_h = ratio_reward(delta, baseline, self.search.beta_h, self.search.r_max)
        rows = torch.arange(len(decision.choice))
        self.ucb_h.update(decision.choice, decision.W_h[rows, decision.choice], r_h)
        previous.remember(name, delta)
        return {name: r_h, f"ts{group}": binary_reward(delta, baseline)}

    def bandit_flops(self, batch: int, groups: int) -> float:
        """UCB_H's choice and update in every group of a training step."""
        dim = self.ucb_h.config.dim
        return groups * (linucb_flops(batch, len(self.search.head_options), dim, False)
                         + linucb_flops(batch, 1, dim, True))

    def state_dict(self) -> dict:
        return {"ucb_h": self.ucb_h.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.ucb_h.load_state_dict(state["ucb_h"])


def search_strategy(search: SearchConfig) -> SearchStrategy:
    """The strategy of a search's ``mode``."""
    return TreeSearch(search) if search.mode == "tree" else IntegratedSearch(search)
