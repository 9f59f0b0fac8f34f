"""DHT's training-step rules by hand: the arm features of each epoch (§3) and what they charge, the loader
position a resume restarts from, the full-depth floor's deepest arm, the budget's λ step, the top bandit's
clipped reward and its baseline (Eqs. 11, 14), the classifier each exit reads, and what self-distilled exits
add to the loss and to the FLOPs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tiny_dht import make, started

import dht.methods.dht as dht_module
from dht.flops import linucb_flops, plan_train_flops, thompson_flops
from dht.search.arm_features import compute_arm_features
from dht.search.arms import Arm, SearchConfig, full_arms, partial_arms
from dht.search.budget import STEP
from dht.search.features import HEAD_DIM, TOP_DIM
from dht.search.layout import arm_layout, sample_plan

pytestmark = pytest.mark.usefixtures("dataset_read_once")  # tests/conftest.py






def search_file(tmp_path, search: SearchConfig) -> str:
    path = tmp_path / "search.json"
    path.write_text(json.dumps(search.to_dict()))
    return str(path)


def replayed_features(method, prepared, generator_state: torch.Tensor):
    """§3's arm features as on_epoch_start must draw them: the samples and the random head masks both
    from the method's own generator (seed + 2), in the current phase's layouts."""
    g = torch.Generator()
    g.set_state(generator_state)
    order = torch.randperm(len(prepared.train.ids), generator=g)[: method.search.feature_samples]
    return compute_arm_features(method.model, method.search, method.arms, method.phase_two,
                                [prepared.train.ids[i] for i in order.tolist()], prepared.pad_id, g)


def assert_same_features(a, b) -> None:
    assert torch.equal(a.top, b.top) and torch.equal(a.head_count, b.head_count) and torch.equal(a.head, b.head)
    assert a.flops == b.flops


# --- on_epoch_start ------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["f-dht", "p-dht"])
def test_the_arm_features_are_drawn_from_the_methods_generator_in_the_current_phase(config):
    """§3: each epoch's arm features sample their training rows and head masks from the method's seeded
    generator, not the global RNG (a resume and a rerun must draw the same), and after P-DHT's switch they
    follow the phase-two layouts (bottom d layers, then the top k)."""
    prepared, method, _ = make(config)
    epoch = 1 if config == "p-dht" else 0  # P-DHT switches after min(2, epochs - 1) = 1 epoch here
    before = method.generator.get_state()
    torch.manual_seed(12345)  # whatever the global RNG holds must not matter
    method.on_epoch_start(epoch, prepared.train.ids, prepared.pad_id)
    assert method.phase_two == (config == "p-dht")
    assert_same_features(method.features, replayed_features(method, prepared, before))
    if config == "p-dht":  # the phase-one layouts of the same arms give other features
        g = torch.Generator()
        g.set_state(before)
        order = torch.randperm(len(prepared.train.ids), generator=g)[: method.search.feature_samples]
        phase_one = compute_arm_features(method.model, method.search, method.arms, False,
                                         [prepared.train.ids[i] for i in order.tolist()], prepared.pad_id, g)
        assert not torch.equal(phase_one.top, method.features.top)


def test_the_arm_features_flops_add_to_the_overhead_not_yet_charged():
    """The all-in overhead accumulates until a step charges it: the arm features' FLOPs are added to
    whatever S1 left, not written over it."""
    prepared, method, _ = make("f-dht")
    method.overhead = 1234.0
    method.on_epoch_start(0, prepared.train.ids, prepared.pad_id)
    assert method.features.flops > 0
    assert method.overhead == 1234.0 + method.features.flops


# --- training_batches: the loader position -------------------------------------------------
def test_consumed_counts_the_loader_batches_queued_so_far():
    """``consumed`` (what ``loader_start`` gives a resume) is the number of loader batches already queued
    at every released batch, and 0 again once the epoch's queues are flushed."""
    _, method, batches = started("f-dht")
    pulled = [0]

    def loader():
        for batch in batches:
            pulled[0] += 1
            yield batch

    positions = []
    for _ in method.training_batches(loader()):
        assert method.consumed == pulled[0] and method.loader_start(0) == pulled[0]
        positions.append(pulled[0])
    assert max(positions) == len(batches) and len(set(positions)) > 2  # released at several positions
    assert method.consumed == 0


# --- _floor --------------------------------------------------------------------------------
def test_the_floor_picks_the_deepest_arm_then_the_most_heads_wherever_it_is_listed(tmp_path):
    """Issue 23: the floor's arm is the deepest one with the most heads, found by (depth, heads), not the
    last listed: a user's search may list its arms in any order."""
    search = SearchConfig(mode="integrated", num_layers=4, num_heads=4, b=2, c=2, head_options=(3, 4), q=8,
                          arms=(Arm(2, 4), Arm(4, 4), Arm(4, 3)))
    _, method, _ = make(search_file(tmp_path, search), full_depth_floor=1.0)
    assert method._floor([0, 2, 1, 0]) == [1, 1, 1, 1]


# --- _enqueue with a training budget -------------------------------------------------------
@pytest.mark.parametrize("lam, end", [(50.0, "cheapest"), (-50.0, "dearest")])
def test_the_budgets_lambda_steps_on_the_greedy_choice_under_the_current_penalty(lam, end):
    """budget.py: λ ← λ + η·(mean share of the greedy arms − R), the greedy arm maximising θᵀw − λ·c_a.
    A fresh bandit scores every arm 0, so λ = 50 sends every sample to the cheapest arm and λ = -50 to the
    dearest, and λ moves by η·(that arm's share − 0.4)."""
    _, method, batches = started("f-dht", train_budget=0.4)
    shares = method.arm_shares()
    assert float(shares[0]) == float(shares.min()) < float(shares[-1]) == float(shares.max()) == 1.0
    share = float(shares[0] if end == "cheapest" else shares[-1])
    method.lagrange.value = lam
    method._enqueue(batches[0])
    assert method.lagrange.value == pytest.approx(lam + STEP * (share - 0.4), rel=1e-12)


# --- _update_bandits: the top reward and its baseline ---------------------------------------
def test_the_top_reward_is_clipped_to_r_max_and_the_next_batch_compares_with_this_ones_mean():
    """Eqs. 14 and 11: r_cp = clip(β_cp·mean(δ_prev)/δ, 0, r_max) with δ = loss·L·H; the first batch compares
    with its own mean, and the batch's mean δ is remembered under the top bandit's name ("cp") for the next.
    Batch 1: losses 1 and 2⁻⁷ on 2L4H and 4L4H: δ = 8 and 0.125, mean 4.0625, r = 0.5078125 and 32.5 -> 10.
    Batch 2: loss 1 on 2L4H twice: δ = 8, r = 4.0625 / 8 against the remembered mean."""
    _, method, _ = started("f-dht")
    assert (method.search.r_max, method.search.beta_cp) == (10.0, 1.0)
    assert [(a.depth, a.heads) for a in method.arms] == [(2, 4), (4, 3), (4, 4)]
    x = torch.randn(2, TOP_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    first = SimpleNamespace(x=x, arms=torch.tensor([0, 2]))
    rewards = method._update_bandits(first, [method.arms[0], method.arms[2]], torch.tensor([1.0, 2.0 ** -7]), [])
    assert rewards["top"].tolist() == [0.5078125, 10.0]
    assert method.previous.means == {"cp": 4.0625}
    second = SimpleNamespace(x=x, arms=torch.tensor([0, 0]))
    rewards = method._update_bandits(second, [method.arms[0]] * 2, torch.tensor([1.0, 1.0]), [])
    assert rewards["top"].tolist() == [0.5078125, 0.5078125]
    assert method.previous.means == {"cp": 8.0}


# --- exit_logits and initialise ---------------------------------------------------------------
def test_per_depth_exits_start_as_copies_of_the_final_classifier():
    """FastBERT-style branches: a per-depth run's exit classifiers start as copies of the final one (prepare
    calls ``initialise``), and ``initialise`` copies it again into changed branches."""
    _, method, _ = make("f-dht", exit_classifiers="per-depth")
    model = method.model
    final = model.classifier.state_dict()

    def copies() -> bool:
        return all(torch.equal(branch.state_dict()[k], final[k]) for branch in model.branches for k in final)

    assert len(model.branches) == 3 and copies()
    with torch.no_grad():
        for branch in model.branches:
            branch.weight.normal_()
    assert not copies()
    method.initialise()
    assert copies()


@pytest.mark.parametrize("config", ["p-dht", "p-dht-k0"])
def test_an_exit_reads_the_classifier_after_the_last_layer_its_arm_ran(config, tmp_path):
    """Spec §2 with per-depth exits: an arm's logits come from the classifier of the last layer its layout
    ran: the arm's depth, except P-DHT's phase-two arms with a top part, whose last layer is the model's
    last (the preset's 0L+2L4H arm has depth 2 but ends at layer 4). A P-DHT search with k = 0 (valid)
    has phase-two arms that end at their depth."""
    if config == "p-dht-k0":
        search = SearchConfig(mode="integrated", num_layers=4, num_heads=4, b=2, c=2, head_options=(3, 4), q=8,
                              arms=full_arms(4, 4, 2, 2, (3, 4)), freeze_after=1, top=0,
                              phase_two_arms=partial_arms(4, 4, 2, 2, (3, 4), 0))
        config = search_file(tmp_path, search)
    prepared, method, batches = make(config, exit_classifiers="per-depth")
    model = method.model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for branch in model.branches:  # every exit's classifier differs from the others
            branch.weight.normal_()
    batch = batches[0]
    h, mask = model.embed(batch.input_ids), batch.attention_mask
    last_of = {}
    for epoch in (0, 1):  # phase one, then after the switch
        method.on_epoch_start(epoch, prepared.train.ids, prepared.pad_id)
        assert method.phase_two == (epoch == 1)
        for arm in method.arms:
            layout = arm_layout(method.search, arm, method.phase_two)
            last = max(layout.prefix + sum(layout.groups, ()) + layout.suffix) + 1
            last_of[(method.phase_two, arm)] = last
            assert torch.equal(method.exit_logits(h, mask, arm), method.logits_at(h, mask, last))
    if method.search.top:  # the preset's 0L+2L4H arm: depth 2, last layer 4
        assert last_of[(True, Arm(2, 4, top=2))] == 4
    else:  # k = 0: a phase-two arm of depth 2 ends at layer 2
        assert last_of[(True, Arm(2, 3))] == 2
    assert not torch.equal(method.logits_at(h, mask, 2), method.logits_at(h, mask, 4))


# --- training_step with self-distilled exits ---------------------------------------------------
def test_the_self_distillation_term_is_weighted_by_the_option(monkeypatch):
    """Ours (dht/search/exits.py): the step's loss is mean cross-entropy + self_distill · KL term."""
    _, method, batches = started("f-dht", self_distill=0.5)
    seen, original = {}, dht_module.self_distillation

    def recorded(exits, logits):
        seen["value"], seen["logits"] = original(exits, logits), logits.detach()
        return seen["value"]

    monkeypatch.setattr(dht_module, "self_distillation", recorded)
    deepest = len(method.arms) - 1
    method.ucb_top.select = lambda W: torch.full((len(W),), deepest, dtype=torch.long)
    batch = next(method.training_batches(iter(batches)))
    result = method.training_step(batch)
    distill = float(seen["value"].detach())
    assert result.extra["exits"] == 1 and distill > 0
    cross_entropy = float(F.cross_entropy(seen["logits"], batch.labels))
    assert float(result.loss.detach()) == pytest.approx(cross_entropy + 0.5 * distill, rel=1e-6)


def test_two_self_distilled_exits_cost_three_classifier_passes_each_in_both_counts(tmp_path):
    """With c = 1 a 4-layer arm passes the exits after layers 2 and 3: each trained exit costs 3 classifier
    passes (forward and backward) per sample, added to the paper-style FLOPs and to the all-in FLOPs
    (network + S1 overhead + bandits + exits)."""
    search = SearchConfig(mode="integrated", num_layers=4, num_heads=4, b=2, c=1, head_options=(3, 4), q=8,
                          arms=full_arms(4, 4, 2, 1, (3, 4)))
    _, method, batches = started(search_file(tmp_path, search), self_distill=1.0)
    arm = method.arms.index(Arm(4, 3))
    method.ucb_top.select = lambda W: torch.full((len(W),), arm, dtype=torch.long)
    batch = next(method.training_batches(iter(batches)))
    method.overhead = 1234.0
    result = method.training_step(batch)
    B, config, N_h = len(batch), method.model.config, method.N_h
    assert result.extra["exits"] == 2
    extra = 3 * 2 * B * (2 * config.hidden_size * config.num_classes)
    layout = arm_layout(method.search, Arm(4, 3), False)
    network = sum(plan_train_flops(config, sample_plan(layout, [tuple(g) for g in r["heads"]], N_h), t, (), True)
                  for r, t in zip(result.records, batch.attention_mask.sum(1).tolist()))
    bandits = linucb_flops(B, len(method.arms), 2 * TOP_DIM, update=True) + 2 * (
        thompson_flops(B, N_h, 2 * HEAD_DIM, False) + thompson_flops(B, N_h, 2 * HEAD_DIM, True))
    assert result.flops == pytest.approx(network + extra, rel=1e-12)
    assert result.all_in == pytest.approx(network + extra + 1234.0 + bandits, rel=1e-12)
