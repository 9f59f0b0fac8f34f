"""The analytic FLOP counter agrees with torch's own counter."""

import pytest
import torch
from conftest import tiny_config
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dht.flops import full_forward_flops, full_train_flops, plan_forward_flops, plan_train_flops
from dht.model import DynamicEncoder, ExecutionPlan

CONFIG = tiny_config(num_layers=4, num_heads=4, hidden_size=64, intermediate_size=128)
PLANS = [
    ExecutionPlan.full(4, 4),
    ExecutionPlan.first(2, 4),
    ExecutionPlan.first(3, 4, (1, 2)),
    ExecutionPlan.from_groups(range(4), [(0, 1, 2, 3), (3,)], group_size=2),
    ExecutionPlan.skip_middle(1, 2, 4, 4, (0, 2, 3)),
]


def counted(fn) -> int:
    # On CPU, SDPA's fused kernel has no FLOP formula; the math backend decomposes into counted bmm's.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.describe())
@pytest.mark.parametrize("tokens", [7, 33])
def test_forward_flops_match_torch_counter(plan, tokens):
    model = DynamicEncoder(CONFIG).eval()
    ids = torch.randint(1, 100, (1, tokens))
    mask = torch.ones(1, tokens, dtype=torch.bool)
    measured = counted(lambda: model(ids, mask, plan))
    assert plan_forward_flops(CONFIG, plan, tokens) == pytest.approx(measured, rel=0.01)


@pytest.mark.parametrize("plan", PLANS[:3], ids=lambda p: p.describe())
def test_training_flops_match_torch_counter(plan):
    model = DynamicEncoder(CONFIG).train()
    model.freeze_layers([0], embeddings=True)
    ids = torch.randint(1, 100, (1, 16))
    mask = torch.ones(1, 16, dtype=torch.bool)
    measured = counted(lambda: model(ids, mask, plan).sum().backward())
    ours = plan_train_flops(CONFIG, plan, 16, frozen={0}, embeddings_trainable=False)
    assert ours == pytest.approx(measured, rel=0.01)


@pytest.mark.parametrize("plan", PLANS[1:4], ids=lambda p: p.describe())
def test_training_flops_with_trainable_embeddings_are_three_forwards(plan):
    model = DynamicEncoder(CONFIG).train()
    ids = torch.randint(1, 100, (1, 16))
    mask = torch.ones(1, 16, dtype=torch.bool)
    measured = counted(lambda: model(ids, mask, plan).sum().backward())
    assert plan_train_flops(CONFIG, plan, 16) == pytest.approx(measured, rel=0.01)
    assert plan_train_flops(CONFIG, plan, 16) == 3 * plan_forward_flops(CONFIG, plan, 16)


def test_ratios_and_rules():
    assert plan_forward_flops(CONFIG, ExecutionPlan.full(4, 4), 10) == full_forward_flops(CONFIG, 10)
    assert full_train_flops(CONFIG, 10) == 3 * full_forward_flops(CONFIG, 10)
    half = plan_forward_flops(CONFIG, ExecutionPlan.first(2, 4), 10, classify=False)
    assert half * 2 == plan_forward_flops(CONFIG, ExecutionPlan.full(4, 4), 10, classify=False)
    # Frozen bottom layers cost forward only; a frozen layer above a trainable one passes gradients back.
    plan = ExecutionPlan.first(2, 4)
    one = plan_forward_flops(CONFIG, ExecutionPlan.first(1, 4), 10, classify=False)
    classifier = 3 * (plan_forward_flops(CONFIG, plan, 10) - plan_forward_flops(CONFIG, plan, 10, classify=False))
    assert plan_train_flops(CONFIG, plan, 10, frozen={0}, embeddings_trainable=False) < one + 3 * one + classifier
    assert plan_train_flops(CONFIG, plan, 10, frozen={1}) == 3 * one + 2 * one + classifier
