"""S2 by hand (Alg. 2 lines 7-15): ``_run_s2`` and ``_s2_in_chunks`` on the tiny backbone.

What each test pins: the exit depths ``_run_s2`` records on the way (after the b layers and each group
but the last, never depth 0), the group index and the greediness it hands to UCB_H (tree search, Alg. 2
line 11), and ``_s2_in_chunks``: training draws the heads by Thompson sampling (§3.2), a queue of one
sample, two length-sorted chunks put back in batch order, per-depth exits read by their own depth's
classifier, and no exit read without self-distillation.
"""

from __future__ import annotations

import json

import pytest
import torch

from dht.data import Batch, collate, iterate_batches
from dht.model import ExecutionPlan
from dht.search.arms import Arm, SearchConfig, full_arms, partial_arms, tree_arms
from dht.search.queues import length_chunks
from dht.training.config import RunConfig, TrainConfig
from dht.training.setup import prepare

SMALL = TrainConfig(epochs=2, batch_size=8, max_train=64, max_test=16, seed=11)


pytestmark = pytest.mark.usefixtures("dataset_read_once")  # tests/conftest.py


def started(config, epoch: int = 0, **options):
    """A tiny DHT method with its arm features for ``epoch`` (P-DHT: after its switch when due)."""
    prepared = prepare(RunConfig(method="dht", backbone="tiny", train=SMALL, options={"config": config, **options}))
    method = prepared.method
    method.on_epoch_start(epoch, prepared.train.ids, prepared.pad_id)
    method.model.eval()  # no dropout: the states below are compared with plain forwards
    method.contexts.train(False)  # the normalisers stay put between the calls compared
    return prepared, method


def search_file(tmp_path, **fields) -> str:
    """A search on the tiny 4-layer, 4-head backbone, written as a JSON file the method reads."""
    path = tmp_path / "search.json"
    path.write_text(json.dumps(SearchConfig(num_layers=4, num_heads=4, **fields).to_dict()))
    return str(path)


def a_batch(prepared, size: int = 8) -> Batch:
    return next(iterate_batches(prepared.test.ids, prepared.test.labels, size, prepared.pad_id, shuffle=False))


def first_layers(method, batch: Batch, layers: int):
    """States after the first ``layers`` layers with every head, (B, T, E)."""
    return method.model.run_plan(method.model.embed(batch.input_ids), batch.attention_mask,
                                 ExecutionPlan.first(layers, method.N_h))


@torch.no_grad()
def test_s2_records_the_state_at_each_exit_depth_it_passes(tmp_path):
    """With b = c = 1, the arm 4L4H passes exits after layers 1, 2 and 3 (the b layers, then each group
    but the last): ``states`` gets (1, h1), (2, h2), (3, h3), each the states after that many layers."""
    config = search_file(tmp_path, mode="integrated", b=1, c=1, head_options=(3, 4), arms=full_arms(4, 4, 1, 1, (3, 4)))
    prepared, method = started(config)
    batch = a_batch(prepared)
    states: list = []
    h, decisions = method._run_s2(batch, [Arm(4, 4)] * len(batch), greedy=True, states=states)
    assert [depth for depth, _ in states] == [1, 2, 3] and len(decisions) == 3
    for depth, s in states:  # every head kept (H = 4 of 4): the plain first layers
        assert torch.allclose(s, first_layers(method, batch, depth), atol=1e-5)
    assert torch.allclose(h, first_layers(method, batch, 4), atol=1e-5)


@torch.no_grad()
def test_s2_records_no_exit_at_depth_0_where_p_dhts_groups_start(tmp_path):
    """P-DHT after its switch: the bottom groups start at layer 0 (no b layers first), and depth 0 (the
    embeddings) is no exit. With c = 1 and top k = 1, the arm 2L4H+1L4H runs groups (0,), (1,), then
    layer 3: the one exit passed is after layer 1."""
    config = search_file(tmp_path, mode="integrated", b=1, c=1, head_options=(3, 4),
                         arms=full_arms(4, 4, 1, 1, (3, 4)), freeze_after=1, top=1,
                         phase_two_arms=partial_arms(4, 4, 1, 1, (3, 4), 1))
    prepared, method = started(config, epoch=1)
    assert method.phase_two
    batch = a_batch(prepared)
    arm = Arm(3, 4, top=1)
    states: list = []
    _, decisions = method._run_s2(batch, [arm] * len(batch), greedy=True, states=states)
    assert len(decisions) == 2 and [depth for depth, _ in states] == [1]
    assert torch.allclose(states[0][1], first_layers(method, batch, 1), atol=1e-5)


@torch.no_grad()
def test_tree_search_asks_ucb_h_with_the_groups_one_hot_and_greedily_at_inference(tmp_path):
    """Alg. 2 line 11 (T-DHT): UCB_H's vector for group o ends with one-hot(o), and with ``greedy`` it
    picks argmax θᵀw (no exploration bonus). UCB_H is first taught that 3 heads pay a little (r = 0.1),
    so its greedy choice (3 heads) differs from the exploring one (the untried 4 heads)."""
    config = search_file(tmp_path, mode="tree", b=1, c=1, head_options=(3, 4), arms=tree_arms(4, 1, 1))
    prepared, method = started(config)
    batch = a_batch(prepared)
    arm = Arm(4, None)
    ucb_h = method.strategy.ucb_h
    _, decisions = method._run_s2(batch, [arm] * len(batch), greedy=True)
    for d in decisions:
        ucb_h.update(torch.zeros(len(batch), dtype=torch.long), d.W_h[:, 0], torch.full((len(batch),), 0.1))
    _, decisions = method._run_s2(batch, [arm] * len(batch), greedy=True)
    groups_max = method.strategy.groups_max
    assert len(decisions) == 3 and groups_max == 4
    for o, d in enumerate(decisions):
        one_hot = torch.zeros(groups_max, dtype=d.W_h.dtype)
        one_hot[o] = 1.0
        assert torch.equal(d.W_h[..., -groups_max:], one_hot.expand(len(batch), 2, -1))
        greedy = ucb_h.scores(d.W_h, greedy=True).argmax(1)
        assert torch.equal(d.choice, greedy) and d.choice.tolist() == [0] * len(batch)  # 3 heads
        assert not torch.equal(greedy, ucb_h.scores(d.W_h).argmax(1))  # exploring would choose otherwise
        assert d.H.tolist() == [(3, 4)[c] for c in d.choice.tolist()]


def test_training_s2_draws_the_heads_by_thompson_sampling():
    """§3.2 in training: TSB keeps the top H of sampled scores pᵀw, p ~ N(g, diag(s)⁻¹), not the greedy
    gᵀw. Replaying TSB's generator from before the step, over the rows in the order they ran (one
    length-sorted chunk), gives exactly the heads the step kept."""
    prepared, method = started("f-dht")
    batch = a_batch(prepared)
    arms = [Arm(4, 3)] * len(batch)  # one group (layers 2-3), 3 heads of 4
    (order,) = length_chunks(batch.attention_mask.sum(1).tolist())
    before = method.tsb.generator.get_state()
    _, (decision,) = method._s2_in_chunks(batch, arms)
    method.tsb.generator.set_state(before)
    W, H, kept = decision.W_ts[order], decision.H[order], decision.kept[order]
    assert torch.equal(kept, method.tsb.select(W, H, greedy=False))
    assert kept.sum(1).tolist() == [3] * len(batch)
    assert not torch.equal(kept, method.tsb.select(W, H, greedy=True))


@torch.no_grad()
def test_a_queue_of_one_sample_runs_and_reads_its_arms_exit():
    """A queue flushed at the end of an epoch may hold a single sample: its logits are the exit of its
    arm (2L4H: the shared classifier after the first 2 layers)."""
    prepared, method = started("f-dht")
    one = a_batch(prepared).rows([3])
    logits, decisions = method._s2_in_chunks(one, [Arm(2, 4)])
    assert decisions == []
    expected = method.model.classify(first_layers(method, one, 2), one.attention_mask)
    assert logits.shape == (1, 4) and torch.allclose(logits, expected, atol=1e-6)


@torch.no_grad()
def test_two_length_chunks_come_back_in_batch_order():
    """A queue of 8 short and 8 long samples runs as two length-sorted chunks (``length_chunks``); the
    logits and each group's decisions come back in the batch's own order, each row the sample's own."""
    prepared, method = started("f-dht")
    g = torch.Generator().manual_seed(0)
    lengths = [40 if i % 2 else 4 for i in range(16)]  # interleaved, so sorting moves every row
    ids = [torch.randint(1, 1000, (t,), generator=g).tolist() for t in lengths]
    batch = collate(ids, [0] * 16, list(range(16)), prepared.pad_id)
    assert len(length_chunks(lengths)) == 2
    logits, (decision,) = method._s2_in_chunks(batch, [Arm(4, 4)] * 16)  # every head: no draw matters
    assert logits.shape == (16, 4) and decision.kept.shape == (16, 4)
    for i in range(16):
        alone = batch.rows([i])
        expected = method.model.classify(first_layers(method, alone, 4), alone.attention_mask)
        assert torch.allclose(logits[i], expected[0], atol=1e-5)


@torch.no_grad()
def test_per_depth_exits_are_read_by_their_own_depths_classifier():
    """Self-distillation with per-depth exit classifiers: a 4-layer sample's exit after layer 2 is read by
    the layer-2 branch classifier (``logits_at`` with that depth), not the final one."""
    prepared, method = started("f-dht", exit_classifiers="per-depth", self_distill=1.0)
    torch.manual_seed(0)
    for branch in method.model.branches:  # every exit's classifier differs from the final one
        for p in branch.parameters():
            p.normal_()
    batch = a_batch(prepared)
    exits: list = []
    method._s2_in_chunks(batch, [Arm(4, 4)] * len(batch), exits)
    h2 = first_layers(method, batch, 2)
    expected = method.model.classify(h2, batch.attention_mask, method.model.branches[1])
    assert len(exits) == 1 and torch.allclose(exits[0], expected, atol=1e-5)
    assert not torch.allclose(exits[0], method.model.classify(h2, batch.attention_mask), atol=1e-3)


@torch.no_grad()
def test_without_self_distillation_a_step_reads_only_the_last_exit(monkeypatch):
    """Without ``exits`` the shallower exits are not read: the classifier runs once per chunk. The step
    charges no exit FLOPs then (``training_step`` adds them only with self-distillation), and in training
    each extra read would draw classifier-dropout masks and shift every later one."""
    prepared, method = started("f-dht")
    calls = []
    classify = method.model.classify
    monkeypatch.setattr(method.model, "classify", lambda *a, **k: (calls.append(1), classify(*a, **k))[1])
    batch = a_batch(prepared)
    arms = [Arm(4, 4)] * len(batch)
    method._s2_in_chunks(batch, arms)
    assert len(calls) == 1
    method._s2_in_chunks(batch, arms, [])  # with exits: the exit after layer 2 is read as well
    assert len(calls) == 3
