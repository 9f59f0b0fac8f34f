"""DHT's exits beyond the paper (issue 23): self-distillation (the loss by hand, a step that uses it) and
continuation at inference (which arm follows which, and continued samples equal to the deeper route)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from dht.data import collate, iterate_batches
from dht.flops import classifier_flops
from dht.search.arms import Arm, preset
from dht.search.exits import next_arms, normalised_entropy, self_distillation
from dht.training.config import RunConfig, TrainConfig
from dht.training.hooks import in_batch_order
from dht.training.setup import prepare


def test_the_loss_is_the_mean_kl_from_the_deepest_exit():
    final = torch.tensor([[2.0, 0.0], [0.0, 0.0]], requires_grad=True)
    same = final.detach().clone()
    assert self_distillation([same], final).item() == pytest.approx(0.0, abs=1e-7)
    exit_logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]], requires_grad=True)
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)  # sample 0's teacher; sample 1's is uniform = its exit
    by_hand = float(sum(p[k] * math.log(p[k] / 0.5) for k in range(2))) / 2  # batchmean over 2 samples
    loss = self_distillation([exit_logits, exit_logits], final)
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    loss.backward()
    assert final.grad is None and exit_logits.grad is not None  # the deepest exit teaches, detached
    assert self_distillation([], final).item() == 0.0


def test_a_dht_step_with_self_distilled_exits_trains_the_shallower_exits():
    train = TrainConfig(epochs=1, batch_size=8, max_train=64, max_test=16, seed=2)
    results = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        prepared = prepare(RunConfig(method="dht", backbone="tiny", train=train,
                                     options={"config": "f-dht", "self_distill": weight}))
        method = prepared.method
        method.on_epoch_start(0, prepared.train.ids, prepared.pad_id)
        batches = iterate_batches(prepared.train.ids, prepared.train.labels, 8, prepared.pad_id, shuffle=False)
        deep = next(b for b in method.training_batches(batches) if method.arms[int(b.arms[0])].depth
                    > method.search.b + method.search.c - 1 and method.arms[int(b.arms[0])].depth > method.search.b)
        torch.manual_seed(1)
        results[weight] = (deep, method.training_step(deep))
    (batch, plain), (same, distilled) = results[0.0], results[1.0]
    assert torch.equal(batch.input_ids, same.input_ids)  # both runs trained the same released queue
    exits = distilled.extra["exits"]
    assert "exits" not in plain.extra and exits >= 1
    # The same dropout draws give the same cross-entropy; the exits add their KL (> 0 on a random network).
    assert distilled.loss.item() > plain.loss.item()
    config = method.model.config
    assert distilled.flops - plain.flops == 3 * exits * len(batch) * classifier_flops(config)


def test_each_arm_continues_to_the_next_depth_with_its_own_head_count():
    def links(name, phase_two=False):
        search = preset(name, 6, 12)
        arms = search.phase_two_arms if phase_two else search.arms
        return {arms[a].label(12): None if b is None else arms[b].label(12)
                for a, b in enumerate(next_arms(search, arms))}
    assert links("f-dht") == {"2L12H": "4L12H", "4L8H": "6L8H", "4L10H": "6L10H", "4L12H": "6L12H",
                              "6L8H": None, "6L10H": None, "6L12H": None}
    assert links("s-dht") == {"2L12H": "4L12H", "4L12H": "6L12H", "6L8H": None, "6L10H": None, "6L12H": None}
    assert links("t-dht") == {"2L": "4L", "4L": "6L", "6L": None}
    assert set(links("p-dht", phase_two=True).values()) == {None}  # its top layers always run
    fine = links("f-dht-fine")  # one layer at a time, the head count kept
    assert fine["1L12H"] == "2L12H" and fine["2L8H"] == "3L8H" and fine["5L10H"] == "6L10H"
    assert fine["6L12H"] is None and len(fine) == 16


def continuation_setup(config="f-dht", **options):
    """DHT on the tiny 4-layer, 4-head backbone (F-DHT's arms: 2L4H, 4L3H, 4L4H) and its test batch."""
    torch.manual_seed(0)
    train = TrainConfig(epochs=1, batch_size=8, max_train=48, max_test=24, seed=5, eval_batch_size=8)
    prepared = prepare(RunConfig(method="dht", backbone="tiny", train=train, options={"config": config, **options}))
    method = prepared.method
    method.initialise()
    method.on_epoch_start(0, prepared.train.ids, prepared.pad_id)
    test = prepared.test
    batch = collate(test.ids, test.labels, list(range(len(test))), prepared.pad_id)
    return method, batch


def predict_with(method, batch, **options):
    method.options = dataclasses.replace(method.options, **options)
    return method.predict(batch)


def search_file(tmp_path, mode, b, c, arms):
    """A search config for the tiny backbone with the given layout and arms."""
    search = dataclasses.replace(preset(mode, 4, 4), b=b, c=c, feature_samples=16, arms=arms)
    path = tmp_path / "search.json"
    path.write_text(json.dumps(search.to_dict()))
    return str(path)


def assert_all_continue_to(method, batch, deepest, route, reads):
    """Every sample, sent to the cheapest arm (λ = 1000) and never sure enough (τ = 0), ends on
    ``deepest`` as if it had run that route, plus ``reads`` exit reads on the way."""
    forced = in_batch_order(batch, list(method.predict_route_batches([batch], deepest)))
    continued = predict_with(method, batch, cost_weight=1000.0, continue_above=0.0)
    assert set(continued.routes) == {route}
    torch.testing.assert_close(continued.logits, forced.logits, atol=1e-5, rtol=1e-5)
    read = reads * classifier_flops(method.model.config)
    assert torch.equal(continued.flops, forced.flops + read)
    assert torch.equal(continued.all_in, forced.all_in + read)


def test_a_continued_sample_equals_the_deeper_route_plus_one_exit_read():
    method, batch = continuation_setup()
    shallow = predict_with(method, batch, cost_weight=1000.0, continue_above=1.0)
    assert set(shallow.routes) == {"2L4H"}
    assert_all_continue_to(method, batch, "4L4H", "2L4H>4L4H", reads=1)  # the 2-layer exit read on the way


def test_continuation_runs_group_after_group_to_the_deepest_arm(tmp_path):
    """One layer per group (b = c = 1): 1L4H continues through 2L4H and 3L4H to 4L4H, each step
    starting from the states the last one left, and reads three exits on the way."""
    method, batch = continuation_setup(search_file(tmp_path, "f-dht", 1, 1, tuple(Arm(d, 4) for d in (1, 2, 3, 4))))
    assert_all_continue_to(method, batch, "4L4H", "1L4H>4L4H", reads=3)


def test_only_samples_above_the_entropy_threshold_continue():
    method, batch = continuation_setup()
    shallow = predict_with(method, batch, cost_weight=1000.0, continue_above=1.0)
    entropy = normalised_entropy(shallow.logits)
    tau = float(entropy.median())
    mixed = predict_with(method, batch, cost_weight=1000.0, continue_above=tau)
    went_on = [route == "2L4H>4L4H" for route in mixed.routes]
    assert went_on == (entropy > tau).tolist() and 0 < sum(went_on) < len(went_on)
    stayed = ~torch.tensor(went_on)
    torch.testing.assert_close(mixed.logits[stayed], shallow.logits[stayed], atol=1e-5, rtol=1e-5)
    assert torch.equal(mixed.flops[stayed], shallow.flops[stayed])
    # The samples that went on, a subset of the queue cut to its own padding, equal the deeper route.
    forced = in_batch_order(batch, list(method.predict_route_batches([batch], "4L4H")))
    torch.testing.assert_close(mixed.logits[~stayed], forced.logits[~stayed], atol=1e-5, rtol=1e-5)
    assert torch.equal(mixed.flops[~stayed], forced.flops[~stayed] + classifier_flops(method.model.config))


@pytest.mark.parametrize("exits", ["shared", "per-depth"])
def test_continuation_in_tree_search_and_with_per_depth_exits(tmp_path, exits):
    """T-DHT's arms are depths (UCB_H picks each group's head count, here for group 1 at start = 1);
    per-depth exits read another classifier at each depth."""
    config = search_file(tmp_path, "t-dht", 2, 1, tuple(Arm(d, None) for d in (2, 3, 4)))
    method, batch = continuation_setup(config, exit_classifiers=exits)
    assert_all_continue_to(method, batch, "4L", "2L>4L", reads=2)


def test_continue_above_must_be_a_normalised_entropy():
    from dht.methods.dht import DHTOptions
    with pytest.raises(ValueError, match="--continue-above must be in"):
        DHTOptions(continue_above=1.5)
