"""Tree and integrated search: costs, rewards and UCB_H's updates against hand-computed values."""

import pytest
import torch

from dht.search.arms import Arm, preset
from dht.search.features import HEAD_COUNT_DIM, Contexts
from dht.search.rewards import PreviousBatch
from dht.search.strategies import GroupDecision, IntegratedSearch, TreeSearch, search_strategy

LOSSES = torch.tensor([0.5, 1.0], dtype=torch.float64)


def decision(H, choice=None, W_h=None) -> GroupDecision:
    return GroupDecision(torch.zeros(2, 12, 24), torch.ones(2, 12, dtype=torch.bool), torch.tensor(H),
                         W_h, None if choice is None else torch.tensor(choice))


def test_the_mode_picks_the_strategy():
    assert isinstance(search_strategy(preset("t-dht", 6, 12)), TreeSearch)
    assert isinstance(search_strategy(preset("f-dht", 6, 12)), IntegratedSearch)


def test_tree_search_costs_layers_and_rewards_ucb_h_on_layers_times_heads():
    tree = TreeSearch(preset("t-dht", 6, 12))  # b = c = 2, head options 8, 10, 12
    arms = [Arm(2, None), Arm(4, None)]
    delta, scale = tree.top_cost(LOSSES, arms)
    assert delta.tolist() == [1.0, 4.0] and scale == 1.0  # δ_L = loss·L (Eq. 10), α = 1
    previous = PreviousBatch()
    W_h = torch.randn(2, 3, tree.ucb_h.config.dim, dtype=torch.float64)
    rewards = tree.group_rewards(0, decision([8, 12], [0, 2], W_h), LOSSES, arms, delta, 2.5, previous)
    # δ_H = loss·L·H_o = 8 and 48; the first batch's baseline is its own mean, 28 (Eqs. 12-13)
    assert rewards["H0"].tolist() == pytest.approx([28 / 8, 28 / 48])
    assert rewards["ts0"].tolist() == [1.0, 0.0]  # more effective than the baseline, or not
    assert previous.means == {"H0": 28.0}
    assert tree.ucb_h.counts.tolist() == [1, 0, 1]  # options 8 and 12 were updated, once each
    theta = tree.ucb_h.theta  # with λ = 1: θ = (I + wwᵀ)⁻¹ r w
    w = W_h[0, 0]
    expected = (28 / 8) * torch.linalg.solve(torch.eye(len(w), dtype=torch.float64) + torch.outer(w, w), w)
    assert torch.allclose(theta[0], expected)
    # The next batch is scored against this one's mean δ_H.
    again = tree.group_rewards(0, decision([10, 10], [1, 1], W_h), LOSSES, arms, delta, 2.5, previous)
    assert again["H0"].tolist() == pytest.approx([28 / 10, 28 / 40])


def test_tree_search_asks_ucb_h_per_group_with_a_one_hot_of_the_group():
    tree = TreeSearch(preset("t-dht", 6, 12))
    h, mask = torch.randn(2, 5, 24), torch.ones(2, 5, dtype=torch.bool)
    z = torch.randn(3, HEAD_COUNT_DIM, dtype=torch.float64)
    H, W_h, choice = tree.head_counts(1, h, mask, [Arm(6, None)] * 2, Contexts.create(), z, greedy=True)
    assert W_h.shape == (2, 3, 2 * HEAD_COUNT_DIM + tree.groups_max)
    assert W_h[..., -tree.groups_max:].tolist() == [[[0.0, 1.0, 0.0]] * 3] * 2  # group 1 of 3
    assert choice.tolist() == [0, 0] and H.tolist() == [8, 8]  # an untrained UCB_H: the first option


def test_integrated_search_costs_layers_times_heads_and_gives_tsb_the_top_reward():
    integrated = IntegratedSearch(preset("f-dht", 6, 12))
    arms = [Arm(2, 12), Arm(4, 8)]
    delta, scale = integrated.top_cost(LOSSES, arms)
    assert delta.tolist() == [12.0, 32.0] and scale == 1.0  # δ_cp = loss·L·H (Eq. 14), β_cp = 1
    H, W_h, choice = integrated.head_counts(0, None, None, arms, None, None, greedy=True)
    assert H.tolist() == [12, 8] and W_h is None and choice is None
    previous = PreviousBatch()
    rewards = integrated.group_rewards(0, decision([12, 8]), LOSSES, arms, delta, 20.0, previous)
    assert rewards == {"ts0": pytest.approx(torch.tensor([1.0, 0.0], dtype=torch.float64))}  # 20/12 > 1 > 20/32
    assert previous.means == {} and integrated.bandit_flops(32, 2) == 0.0
    assert integrated.state_dict() == {}


def test_tree_search_state_round_trips():
    tree, other = TreeSearch(preset("t-dht", 6, 12)), TreeSearch(preset("t-dht", 6, 12))
    W_h = torch.randn(2, 3, tree.ucb_h.config.dim, dtype=torch.float64)
    tree.group_rewards(0, decision([8, 12], [0, 2], W_h), LOSSES, [Arm(2, None), Arm(4, None)],
                       torch.tensor([1.0, 4.0], dtype=torch.float64), 2.5, PreviousBatch())
    other.load_state_dict(tree.state_dict())
    assert torch.equal(other.ucb_h.theta, tree.ucb_h.theta) and other.ucb_h.counts.tolist() == [1, 0, 1]
