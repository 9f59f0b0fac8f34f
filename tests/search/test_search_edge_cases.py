"""Edge cases of the search helpers, by hand: costs with plain-number factors, UCB_H's clipped reward,
a batch of one sample, queues with keys of mixed types, and the tree-search arm message."""

import dataclasses

import pytest
import torch

from dht.model import ExecutionPlan
from dht.search.arms import Arm, preset
from dht.search.layout import sample_plans
from dht.search.queues import DepthQueues
from dht.search.rewards import PreviousBatch, cost
from dht.search.strategies import GroupDecision, TreeSearch

F64 = torch.float64


def test_cost_takes_plain_numbers_as_factors():
    """δ = loss · L (· H) (Eqs. 10, 12, 13) with the sizes given as Python numbers: 0.5·3·2.5 and 2·3·2.5."""
    delta = cost(torch.tensor([0.5, 2.0]), 3, 2.5)
    assert delta.dtype == F64 and delta.tolist() == [3.75, 15.0]


def test_ucb_h_learns_from_its_reward_clipped_at_r_max():
    """r_H = β₁·mean(δ_H,prev)/δ_H clipped to [0, r_max] (Eqs. 12-13), and UCB_H is updated with the clipped
    value. Previous mean 200; δ_H = loss·L·H_o = 0.5·2·8 = 8 and 1·4·12 = 48: r = 25 → 10 and 200/48."""
    tree = TreeSearch(preset("t-dht", 6, 12))  # β₁ = 1, r_max = 10
    assert tree.search.r_max == 10.0 and tree.search.beta_h == 1.0
    previous = PreviousBatch({"H0": 200.0})
    W_h = torch.randn(2, 3, tree.ucb_h.config.dim, generator=torch.Generator().manual_seed(0), dtype=F64)
    decision = GroupDecision(torch.zeros(2, 12, 24), torch.ones(2, 12, dtype=torch.bool), torch.tensor([8, 12]),
                             W_h, torch.tensor([0, 2]))
    losses = torch.tensor([0.5, 1.0], dtype=F64)
    rewards = tree.group_rewards(0, decision, losses, [Arm(2, None), Arm(4, None)], None, 0.0, previous)
    assert rewards["H0"].tolist() == pytest.approx([10.0, 200 / 48])
    w = W_h[0, 0]  # option 0 saw one row: θ = (I + wwᵀ)⁻¹ r w with λ = 1
    expected = 10.0 * torch.linalg.solve(torch.eye(len(w), dtype=F64) + torch.outer(w, w), w)
    assert torch.allclose(tree.ucb_h.theta[0], expected)


def test_a_batch_of_one_sample_gets_its_plan():
    """A released queue may hold a single sample (q = 1, or an end-of-epoch flush). F-DHT on 4 layers (b = c = 2):
    the arm 4L3H runs layers 0-1 with every head, then layers 2-3 with the heads it kept, (0, 1, 3)."""
    search = preset("f-dht", 4, 4)
    kept = [torch.tensor([[True, True, False, True]])]
    per_group, plans = sample_plans(search, [Arm(4, 3)], kept, False, 4)
    assert per_group == [[(0, 1, 3)]]
    everything = (0, 1, 2, 3)
    assert plans == [ExecutionPlan((0, 1, 2, 3), (everything, everything, (0, 1, 3), (0, 1, 3)))]


def test_flush_orders_keys_of_any_type_by_their_repr():
    """Keys are any hashables, so flush sorts them by repr (a total order), not by value: None, 6 and "top"
    come out as 'top', 6, None (repr "'top'" < "6" < "None") whatever the push order."""
    queues = DepthQueues(size=5)
    for key, item in [(6, "a"), (None, "b"), ("top", "c"), (6, "d")]:
        queues.push(key, item)
    assert list(queues.flush()) == [("top", ["c"]), (6, ["a", "d"]), (None, ["b"])]


def test_a_tree_search_arm_with_a_head_count_is_refused_naming_ucb_h():
    """In tree search UCB_H chooses H per group, so an arm giving heads is an error that says so."""
    with pytest.raises(ValueError, match=r"in tree search heads must be null \(UCB_H chooses them per group\)"):
        dataclasses.replace(preset("t-dht", 6, 12), arms=(Arm(6, 12),))
