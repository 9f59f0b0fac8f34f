"""The training-time target's cost weight (dht/search/budget.py): dual ascent by hand."""

from __future__ import annotations

import pytest
import torch

from dht.search.budget import LIMIT, STEP, CostWeight


def test_each_step_moves_lambda_by_eta_times_the_gap_to_the_target():
    weight = CostWeight(0.4)
    assert (weight.value, weight.step, STEP) == (0.0, 5.0, 5.0)
    assert weight.update(torch.tensor([1.0, 0.5, 0.3, 0.2])) == pytest.approx(5.0 * (0.5 - 0.4))
    assert weight.update(torch.tensor([0.2, 0.2])) == pytest.approx(0.5 - 1.0)  # under the target: λ falls
    assert weight.value == pytest.approx(-0.5)


def test_lambda_stays_within_the_knobs_range_both_ways():
    high, low = CostWeight(0.0, value=LIMIT - 1.0), CostWeight(1.0, value=-LIMIT + 1.0)
    assert high.update(torch.ones(3)) == LIMIT == 1000.0
    assert low.update(torch.zeros(3)) == -LIMIT


def test_the_state_round_trips_through_plain_numbers():
    weight = CostWeight(0.3, step=2.0)
    weight.update(torch.tensor([0.8]))
    state = weight.state_dict()
    assert state == {"target": 0.3, "value": pytest.approx(1.0), "step": 2.0}
    copy = CostWeight(0.9)
    copy.load_state_dict({k: str(v) if k == "step" else v for k, v in state.items()})  # a string comes back a float
    assert (copy.target, copy.value, copy.step) == (0.3, pytest.approx(1.0), 2.0)
    assert isinstance(copy.step, float)
