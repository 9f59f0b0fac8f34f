"""Algorithm 2's update path, against hand-computed expectations (issue 20, fault 11): after one training
step the top bandit has received r = clip(β·mean(δ_prev)/δ, 0, r_max) with δ = loss·L·H (integrated) or
loss·L (tree) for exactly the arm each sample ran, A and b have moved by w wᵀ and r w, TSB has received the
binary reward 1[mean(δ_prev)/δ > 1], and inference chooses argmax θᵀw with no exploration bonus."""

from __future__ import annotations

import pytest
import torch

from dht.data import iterate_batches
from dht.search.features import TOP_DIM
from dht.training.config import RunConfig, TrainConfig
from dht.training.setup import prepare

SMALL = TrainConfig(epochs=1, batch_size=8, max_train=64, max_test=16, seed=11)


def two_steps(config: str, monkeypatch):
    """A tiny DHT run's first two released batches, each trained with the statistics recorded around it."""
    prepared = prepare(RunConfig(method="dht", backbone="tiny", train=SMALL, options={"config": config}))
    method = prepared.method
    method.on_epoch_start(0, prepared.train.ids, prepared.pad_id)
    ts_rewards = []
    original = method.tsb.update
    monkeypatch.setattr(method.tsb, "update", lambda W, kept, r: (ts_rewards.append(r.clone()), original(W, kept, r)))
    batches = iterate_batches(prepared.train.ids, prepared.train.labels, 8, prepared.pad_id, shuffle=False)
    steps = []
    for batch in method.training_batches(batches):
        before = {"A": torch.linalg.inv(method.ucb_top.A_inv), "b": method.ucb_top.b.clone(),
                  "previous": dict(method.previous.means)}
        ts_rewards.clear()
        result = method.training_step(batch)
        steps.append((batch, result, before, [r.clone() for r in ts_rewards]))
        if len(steps) == 2:
            return method, steps
    raise AssertionError("fewer than two released batches")


@pytest.mark.parametrize("config", ["f-dht", "t-dht"])
def test_one_step_gives_every_bandit_the_reward_the_paper_defines(config, monkeypatch):
    method, steps = two_steps(config, monkeypatch)
    search = method.search
    scale = search.beta_cp if config == "f-dht" else search.alpha
    name = method.strategy.top_name
    assert any(ts for *_, ts in steps)  # some samples ran groups whose heads TSB chose
    for batch, result, before, ts in steps:
        arms = [method.arms[a] for a in batch.arms.tolist()]
        losses = torch.tensor([r["loss"] for r in result.records], dtype=torch.float64)
        L = torch.tensor([arm.depth for arm in arms], dtype=torch.float64)
        delta = losses * L * (torch.tensor([arm.heads for arm in arms], dtype=torch.float64)
                              if config == "f-dht" else 1.0)
        baseline = before["previous"].get(name, float(delta.mean()))  # the first batch compares with itself
        reward = (scale * baseline / delta).clamp(0, search.r_max)
        assert [r["rewards"]["top"] for r in result.records] == pytest.approx(reward.tolist(), abs=1e-4)
        # UCB_top (Alg. 1 lines 8-9): A += w wᵀ and b += r w on each sample's own arm.
        w = torch.cat([batch.x, method.features.top[batch.arms]], 1).double()
        A_after, b_after = torch.linalg.inv(method.ucb_top.A_inv), method.ucb_top.b
        if batch is steps[-1][0]:
            for arm in range(len(method.arms)):
                rows = batch.arms == arm
                expected_b = before["b"][arm] + (reward[rows, None] * w[rows]).sum(0)
                expected_A = before["A"][arm] + w[rows].T @ w[rows]
                assert torch.allclose(b_after[arm], expected_b, atol=1e-8)
                assert torch.allclose(A_after[arm], expected_A, rtol=1e-6, atol=1e-6)
        # TSB: the binary reward, 1 where the sample's choice was more effective than the previous batch.
        if config == "f-dht":
            assert all(torch.equal(r, (baseline / delta > 1).double()) for r in ts)
        assert all(r.shape == (len(batch),) for r in ts)


def test_greedy_inference_is_argmax_of_theta_w_without_exploration(monkeypatch):
    method, _ = two_steps("f-dht", monkeypatch)
    x = torch.randn(5, TOP_DIM, dtype=torch.float64)
    W = torch.cat([x[:, None, :].expand(-1, len(method.arms), -1),
                   method.features.top[None].expand(5, -1, -1).to(x.dtype)], 2)
    theta = (method.ucb_top.A_inv @ method.ucb_top.b[..., None])[..., 0]  # (N, d)
    expected = torch.einsum("bnd,nd->bn", W, theta).argmax(1)
    assert torch.equal(method.choose_arms(x), expected)
    assert method.ucb_top.config.alpha > 0  # training explores; inference must not
