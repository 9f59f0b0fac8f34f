"""Every public entry point of dht.bandits rejects bad input with a ValueError naming the problem."""

import pytest
import torch

from dht.bandits import (
    LinUCB,
    LinUCBConfig,
    LogisticTS,
    LogisticTSConfig,
    RunningNormalizer,
    multiscale_pool,
    pooled_dim,
)

NAN = float("nan")
INF = float("inf")


def _with(t, index, value):
    t = t.clone()
    t[index] = value
    return t


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_arms=0, dim=3), "n_arms must be >= 1"),
        (dict(n_arms=2.0, dim=3), "n_arms must be an int"),
        (dict(n_arms=True, dim=3), "n_arms must be an int"),
        (dict(n_arms=2, dim=0), "dim must be >= 1"),
        (dict(n_arms=2, dim=3, alpha=-0.1), "alpha must be >= 0"),
        (dict(n_arms=2, dim=3, alpha=NAN), "alpha must be finite"),
        (dict(n_arms=2, dim=3, lam=0.0), "lam must be > 0"),
        (dict(n_arms=2, dim=3, lam="1"), "lam must be a real number"),
    ],
)
def test_linucb_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinUCBConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_arms=0, dim=3), "n_arms must be >= 1"),
        (dict(n_arms=2, dim=-1), "dim must be >= 1"),
        (dict(n_arms=2, dim=3, lam=-1.0), "lam must be > 0"),
        (dict(n_arms=2, dim=3, lam=INF), "lam must be finite"),
        (dict(n_arms=2, dim=3, newton_steps=0), "newton_steps must be >= 1"),
    ],
)
def test_ts_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LogisticTSConfig(**kwargs)


def test_constructors_want_their_config_and_a_generator():
    with pytest.raises(ValueError, match="config must be a LinUCBConfig"):
        LinUCB(LogisticTSConfig(3, 5))
    with pytest.raises(ValueError, match="config must be a LogisticTSConfig"):
        LogisticTS(LinUCBConfig(3, 5))
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        LogisticTS(LogisticTSConfig(3, 5), generator=0)


W_OK = torch.randn(4, 3, 5)


@pytest.mark.parametrize(
    "W, kwargs, match",
    [
        (torch.randn(3, 5), {}, r"W must have shape \(B, n_arms, dim\)"),
        (torch.randn(4, 2, 5), {}, r"W must have shape .* got \(4, 2, 5\)"),
        (torch.randn(4, 3, 6), {}, r"W must have shape .* = \(\*, 3, 5\)"),
        (torch.ones(4, 3, 5, dtype=torch.long), {}, "W must be a floating-point tensor"),
        ([[0.0]], {}, "W must be a torch.Tensor"),
        (_with(W_OK, (1, 2, 3), NAN), {}, "W contains NaN or infinite values"),
        (_with(W_OK, (0, 0, 0), INF), {}, "W contains NaN or infinite values"),
        (_with(W_OK, (0, 0, 0), -INF), {"greedy": True}, "W contains NaN or infinite values"),
        (_with(W_OK, (0, 0, 0), 1e30), {}, "scores overflow"),
        (W_OK, {"allowed": torch.ones(4, 3)}, "allowed must be a bool tensor"),
        (W_OK, {"allowed": torch.ones(4, 2, dtype=torch.bool)}, r"allowed must have shape \(B, n_arms\)"),
        (W_OK, {"allowed": _with(torch.ones(4, 3, dtype=torch.bool), 2, False)}, "row with no allowed arm"),
    ],
)
def test_linucb_select(W, kwargs, match):
    bandit = LinUCB(LinUCBConfig(3, 5))
    with pytest.raises(ValueError, match=match):
        bandit.select(W, **kwargs)


@pytest.mark.parametrize(
    "arms, w, rewards, match",
    [
        (torch.tensor([0, 1]), torch.randn(2, 4), torch.randn(2), r"w must have shape \(B, dim\)"),
        (torch.tensor([0, 1]), torch.randn(2, 5, 1), torch.randn(2), r"w must have shape"),
        (torch.tensor([0, 3]), torch.randn(2, 5), torch.randn(2), r"arms out of range: values must lie in \[0, 3\)"),
        (torch.tensor([-1, 0]), torch.randn(2, 5), torch.randn(2), "arms out of range"),
        (torch.tensor([0.0, 1.0]), torch.randn(2, 5), torch.randn(2), "arms must be an integer tensor"),
        (torch.tensor([0, 1, 2]), torch.randn(2, 5), torch.randn(2), r"arms must have shape \(B,\)"),
        (torch.tensor([0, 1]), torch.randn(2, 5), torch.randn(3), r"rewards must have shape \(B,\)"),
        (torch.tensor([0, 1]), torch.randn(2, 5), torch.tensor([1.0, NAN]), "rewards contains NaN"),
        (torch.tensor([0, 1]), _with(torch.randn(2, 5), (1, 1), INF), torch.randn(2), "w contains NaN or infinite"),
    ],
)
def test_linucb_update(arms, w, rewards, match):
    bandit = LinUCB(LinUCBConfig(3, 5))
    before = bandit.state_dict()
    with pytest.raises(ValueError, match=match):
        bandit.update(arms, w, rewards)
    assert torch.equal(bandit.A_inv, before["A_inv"]) and torch.equal(bandit.b, before["b"])


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda s: s.pop("b"), r"state is missing keys \['b'\]"),
        (lambda s: s.update(config={"n_arms": 4, "dim": 5, "alpha": 1.0, "lam": 1.0}), "state config"),
        (lambda s: s.update(A_inv=torch.eye(5).repeat(3, 1, 1)[:, :4]), r"state\['A_inv'\] must have shape"),
        (lambda s: s.update(b=torch.full((3, 5), NAN)), r"state\['b'\] contains NaN"),
    ],
)
def test_linucb_load_state_dict(mutate, match):
    bandit = LinUCB(LinUCBConfig(3, 5))
    state = bandit.state_dict()
    mutate(state)
    with pytest.raises(ValueError, match=match):
        bandit.load_state_dict(state)
    with pytest.raises(ValueError, match="state must be a dict"):
        bandit.load_state_dict([1, 2])


@pytest.mark.parametrize(
    "W, k, match",
    [
        (W_OK, 4, r"k out of range: need 1 <= k <= n_arms = 3"),
        (W_OK, 0, "k out of range"),
        (W_OK, torch.tensor([1, 2, 3, 4]), "k out of range"),
        (W_OK, torch.tensor([1, 2]), r"k must have shape \(B,\)"),
        (W_OK, torch.tensor([1.0, 2.0, 1.0, 1.0]), "k must be an integer tensor"),
        (W_OK, 2.0, "k must be an int or a"),
        (W_OK, True, "k must be an int or a"),
        (torch.randn(4, 3), 1, r"W must have shape \(B, n_arms, dim\)"),
        (_with(W_OK, (3, 1, 1), NAN), 1, "W contains NaN or infinite values"),
    ],
)
def test_ts_select(W, k, match):
    ts = LogisticTS(LogisticTSConfig(3, 5), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=match):
        ts.select(W, k)


KEPT = torch.tensor([[True, False, True]] * 4)


@pytest.mark.parametrize(
    "W, kept, rewards, match",
    [
        (W_OK, KEPT, torch.tensor([1.0, 0.0, 0.5, 1.0]), "rewards must be binary"),
        (W_OK, KEPT, torch.tensor([1.0, 0.0, 2.0, 1.0]), "rewards must be binary"),
        (W_OK, KEPT, torch.tensor([1.0, 0.0, NAN, 1.0]), "rewards contains NaN"),
        (W_OK, KEPT, torch.ones(5), r"rewards must have shape \(B,\) or \(B, n_arms\)"),
        (W_OK, KEPT, torch.ones(4, 2), r"rewards must have shape"),
        (W_OK, KEPT.float(), torch.ones(4), "kept must be a bool tensor"),
        (W_OK, KEPT[:3], torch.ones(4), r"kept must have shape \(B, n_arms\)"),
        (_with(W_OK, (0, 0, 0), INF), KEPT, torch.ones(4), "W contains NaN or infinite values"),
        (torch.randn(4, 3, 4), KEPT, torch.ones(4), "W must have shape"),
    ],
)
def test_ts_update(W, kept, rewards, match):
    ts = LogisticTS(LogisticTSConfig(3, 5))
    with pytest.raises(ValueError, match=match):
        ts.update(W, kept, rewards)
    assert torch.equal(ts.g, torch.zeros(3, 5, dtype=torch.float64))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda s: s.pop("generator"), r"missing keys \['generator'\]"),
        (lambda s: s.update(generator=3), r"state\['generator'\] must be a uint8 tensor"),
        (lambda s: s.update(s=torch.zeros(3, 5)), r"state\['s'\] must be positive"),
        (lambda s: s.update(g=torch.zeros(3, 4)), r"state\['g'\] must have shape"),
        (lambda s: s.update(config={"n_arms": 3, "dim": 5, "lam": 2.0, "newton_steps": 3}), "state config"),
    ],
)
def test_ts_load_state_dict(mutate, match):
    ts = LogisticTS(LogisticTSConfig(3, 5))
    state = ts.state_dict()
    mutate(state)
    with pytest.raises(ValueError, match=match):
        ts.load_state_dict(state)


H_OK = torch.randn(2, 6, 16)
MASK_OK = torch.ones(2, 6, dtype=torch.bool)


@pytest.mark.parametrize(
    "h, mask, splits, match",
    [
        (torch.randn(6, 16), MASK_OK, {}, r"h must have shape \(B, T, E\)"),
        (H_OK.long(), MASK_OK, {}, "h must be a floating-point tensor"),
        (H_OK, MASK_OK[:, :5], {}, r"mask must have shape \(B, T\) = \(2, 6\)"),
        (H_OK, MASK_OK.float() * 2, {}, "mask must be bool or hold only 0 and 1"),
        (H_OK, _with(MASK_OK, 1, False), {}, r"mask has samples with no real tokens: \[1\]"),
        (_with(H_OK, (0, 2, 3), NAN), MASK_OK, {}, r"h \(real tokens\) contains NaN or infinite"),
        (H_OK, MASK_OK, {"seq_splits": ()}, "seq_splits must be a non-empty tuple"),
        (H_OK, MASK_OK, {"seq_splits": (1, 0)}, "seq_splits entry must be >= 1"),
        (H_OK, MASK_OK, {"emb_splits": 4}, "emb_splits must be a non-empty tuple"),
        (H_OK, MASK_OK, {"emb_splits": (2.5,)}, "emb_splits entry must be an int"),
    ],
)
def test_multiscale_pool(h, mask, splits, match):
    with pytest.raises(ValueError, match=match):
        multiscale_pool(h, mask, **splits)


def test_pooled_dim():
    with pytest.raises(ValueError, match="seq_splits entry must be >= 1"):
        pooled_dim((0,), (4,))
    with pytest.raises(ValueError, match="emb_splits must be a non-empty tuple"):
        pooled_dim((1,), ())


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(4), r"x must have shape \(B, dim\)"),
        (torch.randn(4, 3), r"x must have shape \(B, dim\) = \(\*, 5\), got \(4, 3\)"),
        (torch.ones(4, 5, dtype=torch.long), "x must be a floating-point tensor"),
        (_with(torch.randn(4, 5), (2, 2), INF), "x contains NaN or infinite values"),
    ],
)
def test_running_normalizer_call(x, match):
    norm = RunningNormalizer(5)
    with pytest.raises(ValueError, match=match):
        norm(x)
    assert norm.count == 0


def test_running_normalizer_settings_and_state():
    with pytest.raises(ValueError, match="dim must be >= 1"):
        RunningNormalizer(0)
    with pytest.raises(ValueError, match="eps must be > 0"):
        RunningNormalizer(3, eps=0.0)
    with pytest.raises(ValueError, match="mode must be a bool"):
        RunningNormalizer(3).train(1)
    state = RunningNormalizer(3).state_dict()
    with pytest.raises(ValueError, match="state has dim=3"):
        RunningNormalizer(4).load_state_dict(state)
    with pytest.raises(ValueError, match=r"state\['m2'\] must be non-negative"):
        RunningNormalizer(3).load_state_dict({**state, "m2": -torch.ones(3)})
