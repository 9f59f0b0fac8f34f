"""An arm's layers (Alg. 2's b and c, P-DHT's bottom and top) by hand, and run_group: per-sample heads give
the same states whichever way the samples are grouped."""

import dataclasses

import pytest
import torch
from conftest import random_batch

from dht.model import ExecutionPlan
from dht.model.encoder import kept_mask
from dht.search.arms import Arm, preset
from dht.search.layout import MIN_SHARED, arm_layout, run_group


@pytest.mark.parametrize("sets", [
    [(0, 1)] * MIN_SHARED + [(1, 2), (0, 1, 3), (1, 2)],  # a shared set (one slice); the rest head by head
    [(0, 1)] * MIN_SHARED + [(2, 3)],  # a shared set and a set of its own (a slice of one sample)
    [(0, 1), (1, 2), (2, 3), (0, 3), (0, 1, 2), (3,)],  # no shared set: one head-by-head part, mixed counts
])
def test_run_group_matches_each_sample_alone(tiny_model, sets):
    ids, mask = random_batch(batch=len(sets))
    with torch.no_grad():
        h = tiny_model.embed(ids)
        out = run_group(tiny_model, h, mask, (1, 2), kept_mask(sets, num_heads=4))
        for i, heads in enumerate(sets):
            alone = tiny_model.run_plan(h[i:i + 1], mask[i:i + 1], ExecutionPlan((1, 2), (heads, heads)))
            assert torch.allclose(out[i:i + 1], alone, atol=1e-5), f"sample {i}"


@pytest.mark.parametrize("depth, expected", [
    (3, ((0, 1, 2), ())),
    (9, ((0, 1, 2), ((3, 4, 5), (6, 7, 8)))),
    (12, ((0, 1, 2), ((3, 4, 5), (6, 7, 8), (9, 10, 11)))),
])
def test_an_arm_runs_the_first_b_layers_then_groups_of_c_by_hand(depth, expected):
    """Alg. 2 with the paper's b = c = 3 on 12 layers: the prefix, then groups of c up to the arm's depth."""
    layout = arm_layout(preset("f-dht", 12, 12), Arm(depth, 12), phase_two=False)
    assert (layout.prefix, layout.groups, layout.suffix) == (*expected, ())


def test_b_and_c_play_their_own_parts_by_hand():
    search = dataclasses.replace(preset("f-dht", 12, 12), b=2, c=2, arms=(Arm(2, 12), Arm(6, 12)))
    layout = arm_layout(search, Arm(6, 12), phase_two=False)
    assert layout.prefix == (0, 1) and layout.groups == ((2, 3), (4, 5)) and layout.suffix == ()
    # P-DHT after its switch: the bottom d = depth − top layers in groups of c, the first taking the
    # remainder (5 = 1 + 2 + 2), then the top k layers of the network.
    layout = arm_layout(search, Arm(7, 12, top=2), phase_two=True)
    assert layout.prefix == () and layout.groups == ((0,), (1, 2), (3, 4)) and layout.suffix == (10, 11)


@pytest.mark.parametrize("depth, groups", [
    (2, ()), (6, ((0,), (1, 2, 3))), (12, ((0,), (1, 2, 3), (4, 5, 6), (7, 8, 9))),
])
def test_p_dht_after_its_switch_groups_the_bottom_and_runs_the_top_k_by_hand(depth, groups):
    layout = arm_layout(preset("p-dht", 12, 12), Arm(depth, 8, top=2), phase_two=True)
    assert layout.prefix == () and layout.groups == groups and layout.suffix == (10, 11)
