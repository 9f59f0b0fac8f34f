"""DHT's saved state: a method's state round-trips before its first epoch (no arm features yet), names the
search it was made with, restores UCB_H from a state saved before the search strategies existed (UCB_H at
the top level, no floor generator, no cost weight), and a state without a cost weight leaves λ alone."""

from __future__ import annotations

import copy as copy_module
import json

import pytest
import torch
from state_checks import assert_same_state
from tiny_dht import make

from dht.search.arms import SearchConfig

pytestmark = pytest.mark.usefixtures("dataset_read_once")  # tests/conftest.py






def test_a_state_saved_before_the_first_epoch_has_no_arm_features_and_restores_none():
    """Before ``on_epoch_start`` there are no arm features: the state holds None, and loading it clears the
    features of a method that had computed some."""
    _, fresh, _ = make("f-dht")
    state = copy_module.deepcopy(fresh.state_dict())
    assert state["features"] is None and state["consumed"] == 0
    prepared, other, _ = make("f-dht")
    other.on_epoch_start(0, prepared.train.ids, prepared.pad_id)
    assert other.features is not None
    other.load_state_dict(state)
    assert other.features is None
    assert_same_state(other.state_dict(), fresh.state_dict())


def test_the_saved_state_names_the_search_it_was_made_with(tmp_path):
    """The state (method.json) records the search's settings under ``search``, readable back as the same
    SearchConfig: a saved run says which arms its bandits' statistics belong to."""
    for config in ("t-dht", "p-dht"):
        _, method, _ = make(config)
        saved = json.loads(json.dumps(method.state_dict()["search"]))
        assert SearchConfig.from_dict(saved) == method.search


def legacy(state: dict) -> dict:
    """A state as runs saved it before the search strategies: UCB_H at the top level (built for every mode,
    used by tree search alone), and neither the floor's generator nor the budget's cost weight."""
    old = {k: v for k, v in state.items() if k not in ("strategy", "floor_generator", "lagrange")}
    old["ucb_h"] = state["strategy"]["ucb_h"]
    return old


def test_a_state_saved_before_the_search_strategies_restores_ucb_h_at_the_top_level():
    """load_state_dict's legacy branch: a tree-search state without ``strategy`` restores UCB_H from its
    top-level ``ucb_h``, and the rest of the state as saved."""
    _, method, _ = make("t-dht")
    ucb_h = method.strategy.ucb_h
    g = torch.Generator().manual_seed(5)
    W = torch.randn(4, ucb_h.config.dim, dtype=torch.float64, generator=g)
    ucb_h.update(torch.tensor([0, 1, 1, 0]), W, torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64))
    saved = legacy(copy_module.deepcopy(method.state_dict()))
    assert "strategy" not in saved and "ucb_h" in saved
    _, copy, _ = make("t-dht")
    copy.load_state_dict(saved)
    assert torch.equal(copy.strategy.ucb_h.theta, ucb_h.theta)
    assert_same_state(copy.strategy.state_dict(), method.strategy.state_dict())
    assert_same_state(copy.state_dict(), method.state_dict())


def test_a_state_without_a_cost_weight_leaves_lambda_where_it_is():
    """The budget's λ is restored only when the method has a budget and the state holds one: a state
    saved without one (no --train-budget, or before it existed) leaves a budget run's λ unchanged, and a
    method without a budget ignores a saved λ."""
    _, budget, _ = make("f-dht", train_budget=0.4)
    budget.lagrange.value = 7.5
    _, plain, _ = make("f-dht")
    state = copy_module.deepcopy(plain.state_dict())
    assert state["lagrange"] is None
    budget.load_state_dict(state)
    assert (budget.lagrange.target, budget.lagrange.value) == (0.4, 7.5)
    budget.load_state_dict({k: v for k, v in state.items() if k != "lagrange"})
    assert (budget.lagrange.target, budget.lagrange.value) == (0.4, 7.5)
    plain.load_state_dict(copy_module.deepcopy(budget.state_dict()))
    assert plain.lagrange is None and plain.state_dict()["lagrange"] is None
