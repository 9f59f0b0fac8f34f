"""The bandits learn in float64 whatever the caller's dtype (issue 20): float32 inputs give the statistics that
the same values in float64 give, integer inputs are refused, and restored states are float64 again."""

from __future__ import annotations

import pytest
import torch

from dht.bandits import LinUCB, LinUCBConfig, LogisticTS, LogisticTSConfig
from dht.bandits.context import RunningNormalizer

F32, F64 = torch.float32, torch.float64


def data(rows=40, dim=5, arms=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, dim, generator=g).to(F32)  # float32 values, exactly representable in float64
    return torch.randint(0, arms, (rows,), generator=g), w, torch.rand(rows, generator=g).to(F32)


def test_linucb_learns_float32_inputs_in_float64():
    arms, w, r = data()
    single, double = LinUCB(LinUCBConfig(3, 5)), LinUCB(LinUCBConfig(3, 5))
    single.update(arms, w, r)
    double.update(arms, w.double(), r.double())
    assert single.A_inv.dtype == single.b.dtype == F64
    assert torch.equal(single.b, double.b) and torch.equal(single.A_inv, double.A_inv)
    assert single.counts.dtype == torch.long and single.counts.tolist() == torch.bincount(arms, minlength=3).tolist()
    W = w[:4, None, :].expand(4, 3, 5)
    assert single.scores(W).dtype == F32
    assert torch.allclose(single.scores(W).double(), double.scores(W.double()), atol=1e-5)


@pytest.mark.parametrize("which", ["w", "rewards"])
def test_linucb_refuses_integer_inputs(which):
    arms, w, r = data(rows=4)
    inputs = {"w": w, "rewards": r}
    inputs[which] = inputs[which].round().long()
    with pytest.raises(ValueError, match=f"{which} must be a floating"):
        LinUCB(LinUCBConfig(3, 5)).update(arms, inputs["w"], inputs["rewards"])


def test_a_restored_linucb_state_is_float64():
    arms, w, r = data()
    bandit = LinUCB(LinUCBConfig(3, 5))
    bandit.update(arms, w, r)
    state = bandit.state_dict()
    state = {**state, "A_inv": state["A_inv"].float(), "b": state["b"].float()}
    copy = LinUCB(LinUCBConfig(3, 5))
    copy.load_state_dict(state)
    assert copy.A_inv.dtype == copy.b.dtype == F64


def test_the_normaliser_keeps_float64_statistics_of_float32_contexts():
    _, x, _ = data()
    single, double = RunningNormalizer(5), RunningNormalizer(5)
    assert single.mean.dtype == single.m2.dtype == F64
    out = single(x[:7])
    single.update(x[7:])
    double(x[:7].double())
    double.update(x[7:].double())
    assert out.dtype == F32 and single.mean.dtype == F64
    assert torch.equal(single.mean, double.mean) and torch.equal(single.m2, double.m2)
    for call in (single, single.update):
        with pytest.raises(ValueError, match="x must be a floating"):
            call(x.long())


def test_a_normaliser_state_with_zero_spread_or_float32_loads_as_float64():
    norm = RunningNormalizer(2)
    state = {"dim": 2, "eps": norm.eps, "count": 1, "mean": torch.tensor([1.0, 2.0], dtype=F32),
             "m2": torch.zeros(2, dtype=F32)}  # one row seen: no spread yet
    norm.load_state_dict(state)
    assert norm.mean.dtype == norm.m2.dtype == F64 and norm.mean.tolist() == [1.0, 2.0]
    norm.load_state_dict({**state, "m2": torch.tensor([0.5, 0.25])})
    assert norm.var.tolist() == [0.5, 0.25]


def ts_data(B=12, n=4, d=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(B, n, d, generator=g).to(F32)
    kept = torch.rand(B, n, generator=g) < 0.6
    return W, kept, (torch.rand(B, generator=g) < 0.5).to(F32)


def test_thompson_sampling_learns_float32_inputs_in_float64():
    W, kept, r = ts_data()
    single, double = LogisticTS(LogisticTSConfig(4, 3)), LogisticTS(LogisticTSConfig(4, 3))
    single.update(W, kept, r)
    double.update(W.double(), kept, r.double())
    assert single.g.dtype == single.s.dtype == F64
    assert torch.allclose(single.g, double.g, atol=1e-12) and torch.allclose(single.s, double.s, atol=1e-12)
    for greedy in (True, False):
        single.generator.manual_seed(5)
        double.generator.manual_seed(5)
        z32, z64 = single.logits(W, greedy=greedy), double.logits(W.double(), greedy=greedy)
        assert z32.dtype == F32 and torch.allclose(z32.double(), z64, atol=1e-5)
    with pytest.raises(ValueError, match="W must be a floating"):
        single.logits(W.long())
    with pytest.raises(ValueError, match="W must be a floating"):
        single.update(W.long(), kept, r)


def test_the_sampled_logit_is_the_mean_plus_its_spread():
    W, kept, r = ts_data()
    ts = LogisticTS(LogisticTSConfig(4, 3, lam=4.0))
    ts.update(W, kept, r)
    ts.generator.manual_seed(9)
    z = ts.logits(W.double())
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    mean = (W.double() * ts.g).sum(-1)
    std = (W.double().square() / ts.s).sum(-1).sqrt()
    assert torch.allclose(z, mean + std * eps, atol=1e-10)


def test_equal_logits_keep_the_lowest_arms_and_a_precision_below_one_loads():
    ts = LogisticTS(LogisticTSConfig(5, 2))
    kept = ts.select(torch.ones(3, 5, 2, dtype=F64), 2, greedy=True)  # g = 0: every logit is 0
    assert kept.tolist() == [[True, True, False, False, False]] * 3
    state = ts.state_dict()
    ts.load_state_dict({**state, "s": torch.full((5, 2), 0.5, dtype=F32), "g": state["g"].float()})
    assert ts.s.dtype == ts.g.dtype == F64 and ts.s.tolist() == [[0.5, 0.5]] * 5
