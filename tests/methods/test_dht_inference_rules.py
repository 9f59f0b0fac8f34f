"""DHT at inference by hand (paper §5-6; dht/methods/dht_inference.py) on the tiny backbone.

What each test pins: the greedy arm choice less λ times each arm's FLOP share (the cost weight, plus the
λ that --train-budget learned, and nothing else), S2 continuing from the probe's own states (S1 is not
run twice), continuation (ours) of a lone unsure sample, none for P-DHT after its switch, and none at
``continue_above`` = 1 even where an exit's normalised entropy rounds above 1.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from dht.data import iterate_batches
from dht.flops import classifier_flops
from dht.model import ExecutionPlan
from dht.search.arms import SearchConfig, full_arms, partial_arms
from dht.search.exits import normalised_entropy
from dht.search.features import HEAD_DIM, TOP_DIM, with_arm_features
from dht.training.config import RunConfig, TrainConfig
from dht.training.hooks import in_batch_order
from dht.training.setup import prepare

SMALL = TrainConfig(epochs=2, batch_size=8, max_train=64, max_test=16, seed=11)


pytestmark = pytest.mark.usefixtures("dataset_read_once")  # tests/conftest.py


def started(config: str = "f-dht", epoch: int = 0, **options):
    """A tiny DHT method with its arm features for ``epoch``, and the first test batch of 8."""
    prepared = prepare(RunConfig(method="dht", backbone="tiny", train=SMALL, options={"config": config, **options}))
    method = prepared.method
    method.on_epoch_start(epoch, prepared.train.ids, prepared.pad_id)
    test = next(iterate_batches(prepared.test.ids, prepared.test.labels, 8, prepared.pad_id, shuffle=False))
    return method, test


def route(method, batch, label):
    """Every sample of ``batch`` on the arm ``label`` (greedy heads, no continuation), in batch order."""
    return in_batch_order(batch, list(method.predict_route_batches([batch], label)))


def test_the_greedy_choice_subtracts_the_cost_weight_times_each_arms_share():
    """Alg. 2 lines 3-6 at inference: argmax over arms of θᵀw − λ·share, λ = ``cost_weight`` (no budget:
    nothing else). F-DHT's arms 2L4H, 4L3H, 4L4H; the top bandit is taught that 4L4H pays 0.05 more."""
    method, _ = started()
    shares = method.arm_shares()
    assert shares.argsort().tolist() == [0, 1, 2] and float(shares[2]) == pytest.approx(1.0)
    x = torch.randn(6, TOP_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert method.choose_arms(x).tolist() == [0] * 6  # θ = 0: every arm predicts 0, ties go to arm 0
    method.options = dataclasses.replace(method.options, cost_weight=-1.0)
    assert method.choose_arms(x).tolist() == [2] * 6  # 0 + 1·share: the dearest arm
    W = with_arm_features(x, method.features.top)
    method.ucb_top.update(torch.full((6,), 2), W[:, 2], torch.full((6,), 0.05))
    predicted = method.ucb_top.scores(W, greedy=True)
    for weight in (0.0, -1.0, 0.5, 1.0):
        method.options = dataclasses.replace(method.options, cost_weight=weight)
        assert torch.equal(method.choose_arms(x), (predicted - weight * shares).argmax(1))
    method.options = dataclasses.replace(method.options, cost_weight=0.0)
    assert method.choose_arms(x).tolist() == [2] * 6  # the small edge of 4L4H decides at λ = 0
    assert (predicted[:, 2] - shares[2] < -shares[0]).all()  # at λ = 1 it would not


def test_the_budgets_learned_lambda_alone_steers_the_inference_choice():
    """With --train-budget, λ = cost_weight + the learned λ: a learned λ of -1000 with cost weight 0
    sends every sample to the dearest arm, one of +1000 to the cheapest (θ = 0: shares alone decide)."""
    method, _ = started(train_budget=0.4)
    x = torch.randn(6, TOP_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    method.lagrange.value = -1000.0
    assert method.choose_arms(x).tolist() == [2] * 6
    method.lagrange.value = 1000.0
    method.ucb_top.update(torch.full((6,), 2), with_arm_features(x, method.features.top)[:, 2], torch.ones(6))
    assert method.choose_arms(x).tolist() == [0] * 6


@torch.no_grad()
def test_s2_continues_from_the_probes_states():
    """The probe's states (S1, the first b layers) continue into S2: whatever states S1 hands over are
    what the arm's exit reads, the b layers do not run again. The probe is made to hand over its states
    plus 0.5; on 2L4H (depth b, no group) each sample's logits are the classifier on those states."""
    method, test = started()
    probe = method._probe
    method._probe = lambda batch: (lambda h, x: (h + 0.5, x))(*probe(batch))
    prediction = route(method, test, "2L4H")
    h, _ = probe(test)
    expected = method.model.classify(h + 0.5, test.attention_mask)
    assert torch.allclose(prediction.logits, expected, atol=1e-5)
    assert not torch.allclose(expected, method.model.classify(h, test.attention_mask), atol=1e-3)


@torch.no_grad()
def test_a_lone_unsure_sample_continues_to_the_next_depth():
    """Continuation (ours): a single sample on 2L4H whose exit is unsure (``continue_above`` = 0) runs on
    to 4L4H from its states: its logits are 4L4H's, its FLOPs 4L4H's plus the 2-layer exit it read."""
    method, test = started(continue_above=0.0, cost_weight=1000.0)  # every sample on the cheapest arm
    one = test.rows([5])
    alone = method.predict(one)
    assert alone.routes == ["2L4H>4L4H"]
    deeper = route(method, one, "4L4H")
    assert torch.allclose(alone.logits, deeper.logits, atol=1e-5)
    assert float(alone.flops[0]) == float(deeper.flops[0]) + classifier_flops(method.model.config)


def p_dht_without_top(tmp_path) -> str:
    """A valid P-DHT shape whose phase-two arms keep no top layers (top = 0): arms 2L3H, 2L4H, 4L3H, 4L4H
    whose phase-two layouts run groups of 2 from layer 0."""
    search = SearchConfig(mode="integrated", num_layers=4, num_heads=4, b=2, c=2, head_options=(3, 4),
                          arms=full_arms(4, 4, 2, 2, (3, 4)), freeze_after=1, top=0,
                          phase_two_arms=partial_arms(4, 4, 2, 2, (3, 4), 0))
    path = tmp_path / "p-dht-top-0.json"
    path.write_text(json.dumps(search.to_dict()))
    return str(path)


@pytest.mark.parametrize("shape", ["preset", "top 0"])
@torch.no_grad()
def test_p_dht_after_its_switch_never_continues(shape, tmp_path):
    """P-DHT after its switch has no continuation (``_next_arms``: none for every arm): its layouts start at
    layer 0, so no arm's states extend into another's. With ``continue_above`` = 0 and every sample on the
    cheapest arm, the predictions are those with continuation off."""
    config = "p-dht" if shape == "preset" else p_dht_without_top(tmp_path)
    method, test = started(config, epoch=1, continue_above=0.0, cost_weight=1000.0)
    assert method.phase_two
    unsure = method.predict(test)
    assert all(">" not in r for r in unsure.routes) and len(set(unsure.routes)) == 1
    method.options = dataclasses.replace(method.options, continue_above=1.0)
    plain = method.predict(test)
    assert unsure.routes == plain.routes and torch.equal(unsure.logits, plain.logits)
    assert torch.equal(unsure.flops, plain.flops) and torch.equal(unsure.flops_all_in, plain.flops_all_in)


# Four logits whose normalised entropy, computed in float32, rounds to just above 1.
ABOVE_ONE = torch.tensor([-0.0007466514362022281, -0.00024300174845848233, 0.0001946706761373207,
                          -0.0001615004293853417])


@torch.no_grad()
def test_continue_above_1_never_continues_even_where_the_entropy_rounds_above_1():
    """``continue_above`` = 1 is the paper: no sample ever continues. With every exit reading the same
    near-uniform logits (classifier weights 0, bias ``ABOVE_ONE``), whose normalised entropy rounds to
    1 + 1e-7, a sample on 2L4H (which has a deeper arm) still stops there."""
    method, test = started(cost_weight=1000.0)  # every sample on 2L4H, continue_above = 1 by default
    method.model.classifier.weight.zero_()
    method.model.classifier.bias.copy_(ABOVE_ONE)
    prediction = method.predict(test)
    assert (normalised_entropy(prediction.logits) > 1).all()
    assert prediction.routes == ["2L4H"] * len(test)
    assert prediction.flops.tolist() == route(method, test, "2L4H").flops.tolist()


@torch.no_grad()
def test_per_batch_head_sets_give_a_queue_one_set_the_top_k_of_summed_expected_reward():
    """``--head-sets per-batch`` (ours): every sample of a queue on 4L3H keeps the same 3 heads in its
    group, the top 3 of Σ_i σ(g_γᵀw_iγ) over the queue, and its logits are those of that one shared plan;
    with the same bandit, per-sample heads (the paper) differ between samples."""
    method, test = started()
    method.model.eval()
    g = torch.randn(method.tsb.g.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    method.tsb.g = g * (torch.arange(g.shape[1]) < HEAD_DIM)  # read the samples' own context x only
    arm = next(a for a in method.arms if a.label(method.N_h) == "4L3H")
    own = method._run_s2(test, [arm] * len(test), greedy=True)[1][0].kept
    assert len({tuple(row.tolist()) for row in own}) > 1  # the paper's heads differ per sample here
    method.options = dataclasses.replace(method.options, head_sets="per-batch")
    h, decisions = method._run_s2(test, [arm] * len(test), greedy=True)
    kept = decisions[0].kept
    expected = torch.sigmoid(method.tsb.logits(decisions[0].W_ts, greedy=True)).sum(0).topk(3).indices
    assert kept.sum(1).tolist() == [3] * len(test)
    assert (kept == kept[0]).all() and sorted(torch.nonzero(kept[0]).flatten().tolist()) == sorted(expected.tolist())
    heads = tuple(torch.nonzero(kept[0]).flatten().tolist())
    model, mask = method.model, test.attention_mask
    plan = ExecutionPlan((0, 1, 2, 3), ((0, 1, 2, 3),) * 2 + (heads,) * 2)  # b = 2 layers, then one group
    shared = model.run_plan(model.embed(test.input_ids), mask, plan)
    assert torch.allclose(h, shared, atol=1e-5)


def test_head_sets_takes_per_sample_or_per_batch_only():
    from dht.methods.dht import DHTOptions
    assert DHTOptions(head_sets="per-batch").head_sets == "per-batch"
    with pytest.raises(ValueError, match="--head-sets must be per-sample or per-batch"):
        DHTOptions(head_sets="per-group")
