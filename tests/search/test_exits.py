"""Self-distilled exits (issue 23's first lever): the loss by hand, and a DHT step that uses it."""

from __future__ import annotations

import math

import pytest
import torch

from dht.data import iterate_batches
from dht.flops import classifier_flops
from dht.search.exits import self_distillation
from dht.training.config import RunConfig, TrainConfig
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
