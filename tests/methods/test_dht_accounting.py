"""DHT's method by hand (issue 20, item 5): its settings, the all-in FLOPs of S1 and of a step with and without
each overhead, the records a step writes, the training-time budget and the floor acting on the choice, the
state that a resume restores, and batched inference equal to per-sample inference."""

from __future__ import annotations

import copy as copy_module
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from state_checks import assert_same_state
from tiny_dht import SMALL, make, started

from dht.data import iterate_batches
from dht.flops import (
    full_forward_flops,
    full_train_flops,
    linucb_flops,
    plan_forward_flops,
    plan_train_flops,
    thompson_flops,
)
from dht.methods.dht import DHTMethod
from dht.model import ExecutionPlan
from dht.search.arms import Arm, preset
from dht.search.features import HEAD_DIM, TOP_DIM, with_arm_features
from dht.search.layout import arm_flop_shares, arm_layout, probe_layers, sample_plan
from dht.training.config import TrainConfig
from dht.training.hooks import in_batch_order

pytestmark = pytest.mark.usefixtures("dataset_read_once")  # tests/conftest.py






def test_the_settings_come_from_the_search_the_run_and_the_seed(tmp_path):
    _, method, _ = make("f-dht")
    assert method.search.q == 8  # a preset's queue is the run's batch
    fresh = (method.phase_two, method.features, method.consumed, method.overhead, method.pad_id)
    assert fresh == (False, None, 0, 0.0, 0)
    assert method.lagrange is None and method.ucb_top.config.dim == 2 * TOP_DIM
    assert (method.tsb.config.n_arms, method.tsb.config.dim) == (method.N_h, 2 * HEAD_DIM)
    assert [g.initial_seed() for g in (method.tsb.generator, method.generator, method.floor_generator)] == [12, 13, 14]
    path = tmp_path / "search.json"  # a user's search keeps its own queue size, exploration and ridge
    path.write_text(json.dumps({**preset("f-dht", 4, 4).to_dict(), "q": 5, "explore": 0.7, "lam": 2.5}))
    _, method, _ = make(str(path), train_budget=0.4)
    assert method.search.q == 5 and (method.ucb_top.config.alpha, method.ucb_top.config.lam) == (0.7, 2.5)
    assert method.tsb.config.lam == 2.5
    assert (method.lagrange.target, method.lagrange.value) == (0.4, 0.0)


@pytest.mark.parametrize("epochs, switch", [(1, 1), (2, 1), (3, 2), (5, 2)])
def test_p_dht_switches_after_min_2_and_epochs_minus_1(epochs, switch):
    _, method, _ = make("p-dht", train=TrainConfig(epochs=epochs, batch_size=8, max_train=16, max_test=8))
    assert method.search.freeze_after == switch


def test_the_bench_rows_are_the_papers_four_then_ours():
    runs = DHTMethod.bench_runs(6)
    assert [(r.name, r.options) for r in runs] == [
        ("t-dht", {"config": "t-dht"}), ("s-dht", {"config": "s-dht"}), ("f-dht", {"config": "f-dht"}),
        ("p-dht", {"config": "p-dht"}), ("f-dht-sd", {"config": "f-dht", "self_distill": 1.0}),
        ("f-dht-wu-fine", {"config": "f-dht-fine", "self_distill": 1.0, "exit_classifiers": "per-depth",
                           "full_depth_warmup": 0.5, "warmup_lr": 2e-4, "cost_weight": 1000.0,
                           "continue_above": 0.3})]
    assert (DHTMethod.row_title("f-dht"), DHTMethod.row_title("f-dht-sd")) == ("DHT F-DHT", "DHT F-DHT-SD (ours)")
    assert [r.name for r in runs if r.oracles] == ["f-dht", "f-dht-wu-fine"]  # the bench scores their oracles
    # Our row starts every sample on the cheapest arm, so the bench's curve moves its continuation threshold.
    assert DHTMethod.knob_for(runs[-1].options).option == "continue_above"
    assert DHTMethod.knob_for(runs[0].options).option == "cost_weight"


def test_s1_charges_the_arm_features_the_probe_and_the_choice():
    prepared, method, batches = make("f-dht")
    method.on_epoch_start(0, prepared.train.ids, prepared.pad_id)
    assert method.overhead == method.features.flops > 0
    batch = batches[0]
    method._enqueue(batch)
    probe = ExecutionPlan.first(probe_layers(method.search, False), method.N_h)
    expected = sum(plan_forward_flops(method.model.config, probe, t, classify=False)
                   for t in batch.attention_mask.sum(1).tolist())
    expected += linucb_flops(len(batch), len(method.arms), 2 * TOP_DIM, update=False)
    assert method.overhead == pytest.approx(method.features.flops + expected, rel=1e-12)


@pytest.mark.parametrize("config", ["f-dht", "t-dht", "p-dht"])
def test_a_steps_all_in_flops_are_the_network_plus_each_overhead(config):
    prepared, method, batches = started(config)
    if config == "p-dht":  # after the switch: the bottom frozen, arms with a top part
        method.on_epoch_start(2, prepared.train.ids, prepared.pad_id)
    N_h = method.N_h
    # 4L3H (F-DHT), 4L (T-DHT) or 2L3H+2L4H (P-DHT after its switch): groups run, not every head
    deeper = next(a for a, arm in enumerate(method.arms) if arm.depth > 2 and (arm.heads or 0) < N_h)
    method.ucb_top.select = lambda W: torch.full((len(W),), deeper, dtype=torch.long)
    batch = next(method.training_batches(iter(batches)))
    method.overhead = 1234.0  # what S1 left to charge
    result = method.training_step(batch)
    arms = [method.arms[a] for a in batch.arms.tolist()]
    assert [r["arm"] for r in result.records] == [a.label(N_h) for a in arms]
    assert config != "p-dht" or result.records[0]["arm"] == "2L3H+2L4H"
    config_, B = method.model.config, len(batch)
    layout = arm_layout(method.search, arms[0], method.phase_two)
    G = len(layout.groups)
    lengths = batch.attention_mask.sum(1).tolist()
    plans = [sample_plan(layout, [tuple(g) for g in r["heads"]], N_h) for r in result.records]
    frozen = method.model.frozen_layers()
    assert bool(frozen) == (config == "p-dht")
    embeddings = any(p.requires_grad for p in method.model.embeddings.parameters())
    network = sum(plan_train_flops(config_, p, t, frozen, embeddings) for p, t in zip(plans, lengths))
    assert result.flops == pytest.approx(network, rel=1e-12)
    assert result.full_flops == sum(full_train_flops(config_, t) for t in lengths)
    assert result.full_flops > result.flops or config == "t-dht"  # UCB_H may keep every head
    bandits = linucb_flops(B, len(method.arms), 2 * TOP_DIM, update=True) + G * (
        thompson_flops(B, N_h, 2 * HEAD_DIM, False) + thompson_flops(B, N_h, 2 * HEAD_DIM, True))
    if config == "t-dht":  # UCB_H chooses and learns in every group
        dim_h = method.strategy.ucb_h.config.dim
        bandits += G * (linucb_flops(B, len(method.search.head_options), dim_h, False)
                        + linucb_flops(B, 1, dim_h, True))
    assert G > 0 and result.all_in == pytest.approx(network + 1234.0 + bandits, rel=1e-12)
    assert method.overhead == 0.0  # charged once


def test_self_distilled_exits_add_their_classifier_flops_to_both_counts():
    _, method, batches = started("f-dht", self_distill=1.0)
    batch = next(b for b in method.training_batches(iter(batches)) if method.arms[int(b.arms[0])].depth > 2)
    method.overhead = 0.0
    result = method.training_step(batch)
    exits = result.extra["exits"]
    plain_all_in = result.all_in - result.flops  # the overheads alone
    extra = 3 * exits * len(batch) * 2 * method.model.config.hidden_size * method.model.config.num_classes
    assert exits == (method.arms[int(batch.arms[0])].depth - 2) // 2
    layout = arm_layout(method.search, method.arms[int(batch.arms[0])], False)
    network = sum(plan_train_flops(method.model.config, sample_plan(layout, [tuple(g) for g in r["heads"]],
                                                                    method.N_h), t, (), True)
                  for r, t in zip(result.records, batch.attention_mask.sum(1).tolist()))
    assert result.flops == pytest.approx(network + extra, rel=1e-12)
    assert plain_all_in > 0 and result.all_in == pytest.approx(result.flops + plain_all_in)


def test_a_step_records_each_sample_its_arm_heads_loss_and_rounded_rewards():
    _, method, batches = started("f-dht")
    batch = next(b for b in method.training_batches(iter(batches)) if method.arms[int(b.arms[0])].depth > 2)
    result = method.training_step(batch)
    arms = [method.arms[a] for a in batch.arms.tolist()]
    assert [r["index"] for r in result.records] == batch.index.tolist()
    assert [(r["arm"], r["depth"]) for r in result.records] == [(a.label(method.N_h), a.depth) for a in arms]
    groups = len(arm_layout(method.search, arms[0], False).groups)
    assert all(len(r["heads"]) == groups and all(len(g) == a.heads for g in r["heads"])
               for r, a in zip(result.records, arms))
    assert sum(r["loss"] for r in result.records) / len(batch) == pytest.approx(result.loss.item(), rel=1e-6)
    values = [v for r in result.records for v in r["rewards"].values()]
    assert all(v == round(v, 4) for v in values) and any(v != round(v, 3) for v in values)
    assert set(result.records[0]["rewards"]) == {"top"} | {f"ts{o}" for o in range(groups)}
    assert result.extra == {"phase_two": False}


def test_the_budgets_cost_weight_shifts_the_choice_and_steps_on_the_greedy_shares():
    _, method, batches = started("f-dht", train_budget=0.4)
    seen = {}
    probe = method._probe
    method._probe = lambda batch, **where: seen.setdefault("x", probe(batch, **where))
    shares = method.arm_shares()
    released = method._enqueue(batches[0])
    W = with_arm_features(seen["x"][1], method.features.top)
    greedy = method.ucb_top.scores(W, greedy=True).argmax(1)  # λ = 0 before the step
    assert method.lagrange.value == pytest.approx(5.0 * (float(shares[greedy].mean()) - 0.4))
    expected = method.ucb_top.scores(W).argmax(1).tolist()
    queued = lambda released: [i["arm"] for q in [*method.queues.queues.values(), *released] for i in q]  # noqa: E731
    assert sorted(queued(released)) == sorted(expected)
    for value, arm in ((1000.0, 0), (-1000.0, len(method.arms) - 1)):  # cheapest, then dearest, for everyone
        method.queues.queues.clear()
        seen.clear()
        method.lagrange.value = value
        assert set(queued(method._enqueue(batches[1]))) == {arm}
    before = method.overhead
    method._enqueue(batches[2])  # the budget's greedy choice is charged beside the exploring one
    lengths = batches[2].attention_mask.sum(1).tolist()
    probe_flops = sum(plan_forward_flops(method.model.config, ExecutionPlan.first(2, method.N_h), t, classify=False)
                      for t in lengths)
    assert method.overhead - before == pytest.approx(
        probe_flops + 2 * linucb_flops(8, len(method.arms), 2 * TOP_DIM, update=False), rel=1e-12)
    result = method.training_step(next(method._drain()) if method.pending else
                                  next(method.training_batches(iter(batches[3:]))))
    assert result.extra == {"phase_two": False, "lambda": method.lagrange.value}


def test_the_floor_sends_its_draws_to_the_deepest_arm_with_all_heads():
    _, method, _ = make("f-dht", full_depth_floor=0.5)
    draws = torch.rand(20, generator=torch.Generator().manual_seed(SMALL.seed + 3)) < 0.5
    deepest = len(method.arms) - 1
    assert (method.arms[deepest].depth, method.arms[deepest].heads) == (method.search.num_layers, method.N_h)
    assert method._floor([0] * 20) == [deepest if d else 0 for d in draws.tolist()]
    assert 0 < sum(draws.tolist()) < 20
    _, always, _ = make("f-dht", full_depth_floor=1.0)
    assert always._floor([0, 1, 2]) == [deepest] * 3


def test_the_loader_position_counts_queued_batches_and_restarts_each_epoch():
    _, method, batches = started("f-dht")
    stream = method.training_batches(iter(batches))
    first = next(stream)
    assert method.consumed >= 1 and method.loader_start(0) == method.consumed
    seen = len(first) + sum(len(b) for b in stream)
    assert seen == sum(len(b) for b in batches) and method.consumed == 0




@pytest.mark.parametrize("config, options", [("f-dht", {"train_budget": 0.4, "full_depth_floor": 0.3}),
                                             ("t-dht", {}), ("p-dht", {})])
def test_a_restored_state_is_the_saved_one_and_takes_the_same_next_step(config, options):
    prepared, method, batches = started(config, **options)
    stream = method.training_batches(iter(batches[:4]))
    for _ in range(2):
        method.training_step(next(stream))
    if config == "p-dht":  # after the switch: frozen bottom, the phase-two arms
        method.on_epoch_start(2, prepared.train.ids, prepared.pad_id)
        assert method.phase_two
    state = copy_module.deepcopy(method.state_dict())  # as read back from a checkpoint: nothing shared
    _, copy, _ = make(config, **options)
    copy.model.load_state_dict(method.model.state_dict())
    copy.load_state_dict(state)
    assert_same_state(copy.state_dict(), method.state_dict())
    assert copy.phase_two == method.phase_two and copy.ucb_top.config.n_arms == len(method.arms)
    assert copy.model.frozen_layers() == method.model.frozen_layers()
    results = []
    for m in (method, copy):
        step = next(m.training_batches(iter(batches[4:])))
        torch.manual_seed(3)  # the same dropout masks
        results.append(m.training_step(step))
    assert results[0].records == results[1].records and results[0].extra == results[1].extra


def test_batched_inference_equals_each_sample_alone_and_charges_its_overheads():
    prepared, method, batches = started("f-dht")
    stream = method.training_batches(iter(batches))
    for _ in range(3):
        method.training_step(next(stream))
    test = next(iterate_batches(prepared.test.ids, prepared.test.labels, 8, prepared.pad_id, shuffle=False))
    together = method.predict(test)
    for i in range(len(test)):
        alone = method.predict(test.rows([i]))
        assert torch.allclose(alone.logits[0], together.logits[i], atol=1e-5)
        assert alone.routes == [together.routes[i]]
        assert float(alone.flops[0]) == float(together.flops[i]) and float(alone.all_in[0]) == float(together.all_in[i])
    method.options = dataclasses.replace(method.options, cost_weight=-1000.0)  # the deepest arm: a group runs
    deepest = method.predict(test)
    assert set(deepest.routes) == {method.arms[-1].label(method.N_h)}
    overhead = linucb_flops(1, len(method.arms), 2 * TOP_DIM, update=False) + thompson_flops(
        1, method.N_h, 2 * HEAD_DIM, False)
    assert (deepest.all_in - deepest.flops).tolist() == pytest.approx([overhead] * len(test), rel=1e-12)
    labels = [arm.label(method.N_h) for arm in method.arms]
    for i, route in enumerate(together.routes):
        arm = method.arms[labels.index(route)]
        groups = len(arm_layout(method.search, arm, False).groups)
        overhead = linucb_flops(1, len(method.arms), 2 * TOP_DIM, update=False) + groups * thompson_flops(
            1, method.N_h, 2 * HEAD_DIM, False)
        assert float(together.all_in[i] - together.flops[i]) == pytest.approx(overhead, rel=1e-12)


def test_p_dht_after_its_switch_charges_the_one_layer_probe_at_inference():
    prepared, method, _ = started("p-dht")
    method.on_epoch_start(2, prepared.train.ids, prepared.pad_id)
    test = next(iterate_batches(prepared.test.ids, prepared.test.labels, 8, prepared.pad_id, shuffle=False))
    prediction = method.predict(test)
    labels = [arm.label(method.N_h) for arm in method.arms]
    for i, (route, length) in enumerate(zip(prediction.routes, test.attention_mask.sum(1).tolist())):
        groups = len(arm_layout(method.search, method.arms[labels.index(route)], True).groups)
        overhead = (linucb_flops(1, len(method.arms), 2 * TOP_DIM, update=False)
                    + plan_forward_flops(method.model.config, ExecutionPlan.first(1, method.N_h), length,
                                         classify=False)
                    + groups * thompson_flops(1, method.N_h, 2 * HEAD_DIM, False))
        assert float(prediction.all_in[i] - prediction.flops[i]) == pytest.approx(overhead, rel=1e-12)


def test_each_exit_depth_reads_its_own_classifier_and_p_dhts_top_arms_the_final_one():
    prepared, method, batches = started("f-dht", exit_classifiers="per-depth")
    method.initialise()
    method.model.eval()  # no dropout
    torch.manual_seed(0)
    for branch in method.model.branches:  # make every exit's classifier differ from the others
        for p in branch.parameters():
            p.data.normal_()
    batch = batches[0]
    h = method.model.embed(batch.input_ids)
    mask = batch.attention_mask
    for depth in range(1, method.search.num_layers):
        expected = method.model.classify(h, mask, method.model.branches[depth - 1])
        assert torch.equal(method.logits_at(h, mask, depth), expected)
    assert torch.equal(method.logits_at(h, mask, method.search.num_layers), method.model.classify(h, mask))
    shallow = method.arms[0]
    assert torch.equal(method.exit_logits(h, mask, shallow), method.logits_at(h, mask, shallow.depth))
    assert not torch.equal(method.logits_at(h, mask, 1), method.logits_at(h, mask, 2))
    assert F.softmax(method.logits_at(h, mask, 1), -1).shape == (len(batch), method.model.config.num_classes)


def test_the_inference_cost_weight_adds_the_budgets_learned_lambda():
    _, method, _ = started("f-dht", train_budget=0.4)
    x = torch.randn(6, TOP_DIM, dtype=torch.float64)
    plain = method.ucb_top.scores(with_arm_features(x, method.features.top), greedy=True).argmax(1)
    assert torch.equal(method.choose_arms(x), plain)  # λ = 0, cost weight 0
    method.lagrange.value = 1000.0
    assert method.choose_arms(x).tolist() == [0] * 6  # the cheapest arm
    method.options = dataclasses.replace(method.options, cost_weight=-2000.0)  # together: -1000
    assert method.choose_arms(x).tolist() == [len(method.arms) - 1] * 6
    method.forced_arm = 2
    forced = method.choose_arms(x)
    assert forced.dtype == torch.long and forced.tolist() == [2] * 6


def test_a_fixed_route_costs_its_plan_and_never_continues():
    prepared, method, _ = started("f-dht", continue_above=0.0)  # every unsure sample would go on
    test = next(iterate_batches(prepared.test.ids, prepared.test.labels, 8, prepared.pad_id, shuffle=False))
    lengths = test.attention_mask.sum(1).tolist()
    config = method.model.config
    for route in ("2L4H", "4L4H"):
        assert route in method.fixed_routes()
        prediction = in_batch_order(test, list(method.predict_route_batches([test], route)))
        assert prediction.routes == [route] * len(test)
        layers = int(route[0])
        assert prediction.flops.tolist() == [plan_forward_flops(config, ExecutionPlan.first(layers, 4), t)
                                             for t in lengths]
        assert prediction.full_flops.tolist() == [full_forward_flops(config, t) for t in lengths]
    continued = method.predict(test)
    assert all(r.startswith("2L4H>") for r in continued.routes if r.startswith("2L4H"))
    reads = [r.count(">") for r in continued.routes]
    assert sum(reads) > 0
    read_flops = 2 * config.hidden_size * config.num_classes
    fixed = {r: in_batch_order(test, list(method.predict_route_batches([test], r))).flops for r in ("4L4H",)}
    assert "2L4H>4L4H" in continued.routes
    for i, route in enumerate(continued.routes):
        if route == "2L4H>4L4H":  # the deeper route's FLOPs plus the 2-layer exit it read on the way
            assert float(continued.flops[i]) == pytest.approx(float(fixed["4L4H"][i]) + read_flops)


def test_a_probe_on_diverged_weights_says_so():
    from dht.training.hooks import NonFiniteError
    _, method, batches = started("f-dht")
    with torch.no_grad():
        method.model.embeddings.word.weight.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match="the probe's hidden states are not finite"):
        method._probe(batches[0])


def test_p_dht_after_its_switch_costs_its_own_layouts(tmp_path):
    """A P-DHT shape whose top k (1) differs from b (2), so that a phase-two arm's layout (bottom d layers
    with H heads, then the top k with all) costs otherwise than the phase-one layout of the same depth."""
    from dht.search.arms import SearchConfig, full_arms, partial_arms
    search = SearchConfig(mode="integrated", num_layers=4, num_heads=4, b=2, c=1, head_options=(3, 4),
                          arms=full_arms(4, 4, 2, 1, (3, 4)), freeze_after=1, top=1,
                          phase_two_arms=partial_arms(4, 4, 2, 1, (3, 4), 1))
    path = tmp_path / "p-dht.json"
    path.write_text(json.dumps(search.to_dict()))
    prepared, method, batches = make(str(path))
    method.on_epoch_start(1, prepared.train.ids, prepared.pad_id)
    assert method.phase_two and method.arms == search.phase_two_arms
    config = method.model.config
    shares = method.arm_shares()
    assert torch.equal(shares, arm_flop_shares(config, search, search.phase_two_arms, True))
    assert not torch.equal(shares, arm_flop_shares(config, search, search.phase_two_arms, False))
    before = method.overhead
    method._enqueue(batches[0])  # after the switch the probe is the first layer alone
    lengths = batches[0].attention_mask.sum(1).tolist()
    probe = sum(plan_forward_flops(config, ExecutionPlan.first(1, 4), t, classify=False) for t in lengths)
    assert method.overhead - before == pytest.approx(
        probe + linucb_flops(8, len(method.arms), 2 * TOP_DIM, update=False), rel=1e-12)
    test = next(iterate_batches(prepared.test.ids, prepared.test.labels, 8, prepared.pad_id, shuffle=False))
    arm = Arm(3, 3, top=1)  # layers 0-1 with 3 heads, then layer 3 with all 4
    route = arm.label(4)
    layout = arm_layout(search, arm, True)
    plan = sample_plan(layout, [(0, 1, 2)] * len(layout.groups), 4)
    prediction = in_batch_order(test, list(method.predict_route_batches([test], route)))
    lengths = test.attention_mask.sum(1).tolist()
    assert prediction.flops.tolist() == [plan_forward_flops(config, plan, t) for t in lengths]
    overhead = [linucb_flops(1, len(method.arms), 2 * TOP_DIM, update=False) + len(layout.groups) * thompson_flops(
        1, 4, 2 * HEAD_DIM, False) + plan_forward_flops(config, ExecutionPlan.first(1, 4), t, classify=False)
        for t in lengths]
    assert (prediction.all_in - prediction.flops).tolist() == pytest.approx(overhead, rel=1e-12)
