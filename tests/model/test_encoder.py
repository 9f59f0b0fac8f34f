"""The dynamic encoder really skips work and computes exactly what masking would."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import random_batch

from dht.model import ExecutionPlan
from dht.model.encoder import HeadParts


def masked_heads_layer(layer, h, mask, heads):
    """Reference: compute every head, zero the dropped heads' context, then project (eval mode)."""
    attention = layer.attention
    B, T, E = h.shape
    nh, dh = attention.num_heads, attention.head_dim
    q, k, v = attention.qkv(h).view(B, T, 3, nh, dh).permute(2, 0, 3, 1, 4)  # (B, nh, T, dh)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    context = scores.softmax(-1) @ v  # (B, nh, T, dh)
    keep = torch.zeros(nh, dtype=torch.bool)
    keep[list(heads)] = True
    context = context * keep[None, :, None, None]
    context = context.transpose(1, 2).reshape(B, T, E)
    h = layer.attention_norm(h + attention.out(context))
    return layer.ffn_norm(h + layer.ffn_out(F.gelu(layer.ffn_in(h))))


@pytest.mark.parametrize("heads", [(0,), (1, 3), (0, 1, 2), (0, 1, 2, 3)])
def test_sliced_heads_equal_masked_heads(tiny_model, heads):
    ids, mask = random_batch()
    with torch.no_grad():
        h = tiny_model.embed(ids)
        sliced = tiny_model.run_plan(h, mask, ExecutionPlan((0, 1), (heads, heads)))
        reference = masked_heads_layer(tiny_model.layers[1], masked_heads_layer(tiny_model.layers[0], h, mask, heads),
                                       mask, heads)
    assert (sliced - reference)[mask].abs().max() <= 1e-5


def test_mixed_plan_batch_equals_each_sample_alone(tiny_model):
    ids, mask = random_batch(batch=6)
    plans = [ExecutionPlan.first(2, 4), ExecutionPlan.first(4, 4, (0, 2)), ExecutionPlan.full(4, 4),
             ExecutionPlan.first(2, 4), ExecutionPlan.skip_middle(1, 2, 4, 4, (1,)), ExecutionPlan.full(4, 4)]
    with torch.no_grad():
        together = tiny_model(ids, mask, plans)
        alone = torch.cat([tiny_model(ids[i:i + 1, :int(mask[i].sum())], mask[i:i + 1, :int(mask[i].sum())], plans[i])
                           for i in range(6)])
    assert together.shape == (6, 3)
    assert (together - alone).abs().max() <= 1e-5


def test_same_shape_with_per_sample_heads_equals_each_sample_alone(tiny_model):
    """Samples sharing depth and head counts run as one batch even when their heads differ."""
    ids, mask = random_batch(batch=5)
    plans = [ExecutionPlan.from_groups(range(4), [(0, 1), heads], group_size=2)
             for heads in [(0, 1), (2, 3), (1, 3), (0, 2), (2, 3)]]
    with torch.no_grad():
        together = tiny_model(ids, mask, plans)
        alone = torch.cat([tiny_model(ids[i:i + 1], mask[i:i + 1], plans[i]) for i in range(5)])
    assert (together - alone).abs().max() <= 1e-5


def test_per_sample_heads_give_the_same_gradients(tiny_model):
    ids, mask = random_batch(batch=3)
    plans = [ExecutionPlan.first(2, 4, heads) for heads in [(0, 1), (1, 2), (0, 3)]]
    tiny_model(ids, mask, plans).sum().backward()
    batched = tiny_model.layers[1].attention.qkv.weight.grad.clone()
    tiny_model.zero_grad()
    for i in range(3):
        tiny_model(ids[i:i + 1], mask[i:i + 1], plans[i]).sum().backward()
    assert torch.allclose(batched, tiny_model.layers[1].attention.qkv.weight.grad, atol=1e-5)


def test_skipping_the_middle_equals_explicit_layers(tiny_model):
    ids, mask = random_batch()
    plan = ExecutionPlan.skip_middle(bottom=1, top=2, num_layers=4, num_heads=4, bottom_heads=(0, 3))
    assert plan.layers == (0, 2, 3)
    with torch.no_grad():
        got = tiny_model(ids, mask, plan)
        attn = mask[:, None, None, :]
        h = tiny_model.layers[0](tiny_model.embed(ids), attn, (0, 3))
        h = tiny_model.layers[3](tiny_model.layers[2](h, attn, (0, 1, 2, 3)), attn, (0, 1, 2, 3))
        expected = tiny_model.classify(h, mask)
    assert (got - expected).abs().max() <= 1e-6


def test_padding_does_not_change_the_output(tiny_model):
    ids, mask = random_batch(batch=3, length=8)
    padded_ids = torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], 1)
    padded_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], 1)
    with torch.no_grad():
        assert torch.allclose(tiny_model(ids, mask), tiny_model(padded_ids, padded_mask), atol=1e-6)


def test_probe_states_can_be_reused(tiny_model):
    ids, mask = random_batch()
    plan = ExecutionPlan.first(4, 4, (0, 1))
    probe, rest = plan.split(2)
    with torch.no_grad():
        hidden = tiny_model.run_plan(tiny_model.embed(ids), mask, probe)
        assert torch.allclose(tiny_model(ids, mask, rest, hidden=hidden), tiny_model(ids, mask, plan), atol=1e-6)


def test_dropped_heads_get_no_gradient(tiny_model):
    ids, mask = random_batch()
    tiny_model.train()
    tiny_model(ids, mask, ExecutionPlan.first(1, 4, (1,))).sum().backward()
    grad = tiny_model.layers[0].attention.qkv.weight.grad.view(3, 4, 8, 32)
    assert grad[:, 1].abs().sum() > 0
    assert grad[:, [0, 2, 3]].abs().sum() == 0
    assert tiny_model.layers[1].ffn_in.weight.grad is None  # layer 1 did not run


def test_freeze_layers(tiny_model):
    tiny_model.freeze_layers([0, 1])
    assert tiny_model.frozen_layers() == frozenset({0, 1})
    assert not tiny_model.embeddings.word.weight.requires_grad


def test_plan_that_does_not_fit_is_rejected(tiny_model):
    ids, mask = random_batch()
    with pytest.raises(ValueError, match="layer 5"):
        tiny_model(ids, mask, ExecutionPlan.first(6, 4))
    with pytest.raises(ValueError, match="head 7"):
        tiny_model(ids, mask, ExecutionPlan.first(1, 4, (7,)))
    with pytest.raises(ValueError, match="plans for a batch"):
        tiny_model(ids, mask, [ExecutionPlan.full(4, 4)])


@pytest.mark.parametrize("pool", [4, 3])  # 3: head 3 is kept by no sample, a grid row of padding alone
def test_the_batched_per_sample_path_equals_the_head_by_head_path(tiny_model, pool):
    """The GPU's per-sample path (three batched products over a padded head grid) computes what the
    CPU's head-by-head path computes, forward and backward; run here on the CPU by calling it directly."""
    attention = tiny_model.layers[1].attention
    g = torch.Generator().manual_seed(4)
    h = torch.randn(7, 9, tiny_model.config.hidden_size, generator=g, requires_grad=True)
    attn = torch.ones(7, 1, 1, 9, dtype=torch.bool)
    attn[2, ..., 6:] = False
    kept = torch.zeros(7, 4, dtype=torch.bool)
    for row, count in enumerate([2, 1, 2, 3, 2, 1, 2]):  # head counts differ between samples
        kept[row, torch.randperm(pool, generator=g)[:count]] = True
    results = []
    for path in (attention._per_sample_heads, attention._per_sample_heads_batched):
        tiny_model.zero_grad()
        h.grad = None
        out = path(h, attn, kept)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = (h.grad, attention.qkv.weight.grad, attention.out.weight.grad)
        results.append((out.detach(), *(grad.clone() for grad in grads)))
    for by_head, batched in zip(*results):
        assert torch.allclose(by_head, batched, atol=1e-5)


def test_a_layer_in_head_parts_equals_each_part_alone(tiny_model):
    """HeadParts: attention part by part (shared heads, per-sample heads, another count), the FFN once."""
    layer, g = tiny_model.layers[2], torch.Generator().manual_seed(7)
    h = torch.randn(6, 5, tiny_model.config.hidden_size, generator=g)
    attn = torch.ones(6, 1, 1, 5, dtype=torch.bool)
    rows = (torch.tensor([4, 0]), torch.tensor([1, 5, 2]), torch.tensor([3]))
    kept = ((0, 2), torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool), (0, 1, 2, 3))
    with torch.no_grad():
        together = layer(h, attn, HeadParts(rows, kept))
        for part, heads in zip(rows, kept):
            assert torch.allclose(together[part], layer(h[part], attn[part], heads), atol=1e-6)
        for row, mask in zip(rows[1].tolist(), kept[1]):  # each sample of the per-sample part, alone
            alone = layer(h[row:row + 1], attn[row:row + 1], tuple(torch.nonzero(mask).flatten().tolist()))
            assert torch.allclose(together[row], alone[0], atol=1e-6)
