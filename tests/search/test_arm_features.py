"""Arm features (spec §3): shared prefixes give the same features as one pass per arm, for fewer FLOPs."""

import dataclasses

import torch

from conftest import random_batch
from dht.flops import plan_forward_flops
from dht.model import ExecutionPlan
from dht.search.arm_features import compute_arm_features
from dht.search.arms import Arm, preset
from dht.search.features import TOP_POOL, pool, standardise


def test_shared_passes_equal_one_pass_per_arm(tiny_model):
    # With every head kept there is no randomness, so each arm's feature is the pool after its depth.
    search = dataclasses.replace(preset("s-dht", 4, 4), head_options=(4,))
    arms = (Arm(2, 4), Arm(4, 4))
    ids, mask = random_batch(batch=6)
    rows = [row[: int(m.sum())].tolist() for row, m in zip(ids, mask)]
    features = compute_arm_features(tiny_model, search, arms, False, rows, 0, torch.Generator().manual_seed(0))
    expected = []
    with torch.no_grad():
        h = tiny_model.embed(ids)
        for arm in arms:
            out = tiny_model.run_plan(h, mask, ExecutionPlan.first(arm.depth, 4))
            expected.append(pool(out, mask, TOP_POOL).sum(0).double() / len(rows))
    assert torch.allclose(features.top, standardise(torch.stack(expected)), atol=1e-5)
    # The 4-layer arm continues from the 2-layer one: 4 layer passes, not 6.
    lengths = mask.sum(1).tolist()
    assert features.flops == sum(plan_forward_flops(tiny_model.config, ExecutionPlan.first(4, 4), t, classify=False)
                                 for t in lengths)


def test_f_dht_features_cost_about_half_of_one_pass_per_arm(tiny_model):
    search = preset("f-dht", 4, 4)
    from dht.search.arms import full_arms
    arms = full_arms(4, 4, search.b, search.c, search.head_options)
    ids, mask = random_batch(batch=5)
    rows = [row[: int(m.sum())].tolist() for row, m in zip(ids, mask)]
    features = compute_arm_features(tiny_model, search, arms, False, rows, 0, torch.Generator().manual_seed(0))
    naive = sum(plan_forward_flops(tiny_model.config, ExecutionPlan.first(arm.depth, 4, tuple(range(arm.heads))),
                                   t, classify=False) for arm in arms for t in mask.sum(1).tolist())
    assert features.flops < 0.75 * naive
    assert torch.isfinite(features.top).all() and features.top.shape[0] == len(arms)
    assert torch.isfinite(features.head_count).all() and torch.isfinite(features.head).all()
