"""Arm features (spec §3): shared prefixes give the same features as one pass per arm, for fewer FLOPs."""

import dataclasses

import pytest
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


def test_each_arm_averages_the_samples_that_kept_its_head_count(tiny_model, monkeypatch):
    # Arms 2L4H and 4L2H, head counts (2, 4): samples at even positions keep 2 heads, odd ones 4.
    monkeypatch.setattr("dht.search.arm_features.standardise", lambda z: z)  # compare raw averages
    search = dataclasses.replace(preset("f-dht", 4, 4), head_options=(2, 4))
    arms = (Arm(2, 4), Arm(4, 2))
    ids, mask = random_batch(batch=6)
    rows = [row[: int(m.sum())].tolist() for row, m in zip(ids, mask)]
    features = compute_arm_features(tiny_model, search, arms, False, rows, 0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        odd = torch.arange(1, 6, 2)
        out = tiny_model.run_plan(tiny_model.embed(ids[odd]), mask[odd], ExecutionPlan.first(2, 4))
        shallow = pool(out, mask[odd], TOP_POOL).double().mean(0)
    assert torch.allclose(features.top[0], shallow, atol=1e-5)
    # One pass per sample: all of them run the 2-layer prefix, the even ones then 2 layers with 2 heads.
    lengths = mask.sum(1).tolist()
    prefix = sum(plan_forward_flops(tiny_model.config, ExecutionPlan.first(2, 4), t, classify=False) for t in lengths)
    group = sum(plan_forward_flops(tiny_model.config, ExecutionPlan((2, 3), ((0, 1), (0, 1))), t, classify=False)
                for t in lengths[0::2])
    assert features.flops == pytest.approx(prefix + group)


def test_f_dht_features_cost_one_pass_of_the_model(tiny_model):
    search = preset("f-dht", 4, 4)
    from dht.search.arms import full_arms
    arms = full_arms(4, 4, search.b, search.c, search.head_options)
    ids, mask = random_batch(batch=5)
    rows = [row[: int(m.sum())].tolist() for row, m in zip(ids, mask)]
    features = compute_arm_features(tiny_model, search, arms, False, rows, 0, torch.Generator().manual_seed(0))
    one_pass = sum(plan_forward_flops(tiny_model.config, ExecutionPlan.first(4, 4), t, classify=False)
                   for t in mask.sum(1).tolist())
    assert 0.5 * one_pass < features.flops <= one_pass
    assert torch.isfinite(features.top).all() and features.top.shape[0] == len(arms)
    assert torch.isfinite(features.head_count).all() and torch.isfinite(features.head).all()
