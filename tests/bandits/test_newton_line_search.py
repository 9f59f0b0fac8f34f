"""The Newton map of the logistic Thompson sampler (§3.2; Chapelle & Li 2011, Alg. 3): its backtracking
line search and its rounding tolerance, on 1-D arms whose Newton steps are computed by hand.

One arm, one row w = 1 with reward 1, prior mean g0 and precision s: the objective is
f(g) = ½·s·(g − g0)² + log(1 + exp(−g)), and the Newton step from g0 is grad / H with
grad = σ(g0) − 1 and H = σ(g0)·(1 − σ(g0)) + s.
"""

import math

import torch

from dht.bandits import LogisticTS, LogisticTSConfig
from dht.bandits.thompson import _newton_map

F64 = torch.float64


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _f(g: float, g0: float, s: float) -> float:
    """The §3.2 objective of the 1-D arm (row w = 1, reward 1)."""
    return 0.5 * s * (g - g0) ** 2 + math.log1p(math.exp(-g))


def _step(g0: float, s: float) -> float:
    """The full Newton step grad / H at g = g0 (the map moves g to g0 − t·step)."""
    p = _sigmoid(g0)
    return (p - 1.0) / (p * (1.0 - p) + s)


def _arms(g0s, ss):
    """_newton_map's inputs for 1-D arms with one row w = 1, reward 1 each."""
    P = len(g0s)
    return (torch.tensor(g0s, dtype=F64)[:, None], torch.tensor(ss, dtype=F64)[:, None],
            torch.ones(P, 1, 1, dtype=F64), torch.ones(P, 1, dtype=F64), torch.ones(P, 1, dtype=F64))


def test_each_arm_backtracks_to_its_own_largest_step_that_lowers_the_objective():
    """Step sizes 1, 1/2, 1/4, ... are tried per arm and the largest that does not raise f is taken.

    Arm 0 (g0 = 0, s = 1): the full step lowers f, g = 0 + 0.5 / 1.25 = 0.4.
    Arm 1 (g0 = −10, s = 0.01): the full and half steps overshoot (f rises from 10 to ≈ 50 and ≈ 12.4),
    the quarter step lowers f, so g = −10 − step / 4.
    """
    assert _step(0.0, 1.0) == -0.4
    step = _step(-10.0, 0.01)
    f0 = _f(-10.0, -10.0, 0.01)
    assert _f(-10.0 - step, -10.0, 0.01) > f0 + 30 and _f(-10.0 - step / 2, -10.0, 0.01) > f0 + 2
    assert _f(-10.0 - step / 4, -10.0, 0.01) < f0 - 5
    g = _newton_map(*_arms([0.0, -10.0], [1.0, 0.01]), steps=1)
    assert torch.allclose(g[:, 0], torch.tensor([0.4, -10.0 - step / 4], dtype=F64), rtol=1e-12, atol=1e-12)


def _prior_mean_with_rise(delta: float, s: float = 0.01) -> float:
    """A prior mean g0 in [−4, −3] whose full Newton step raises f by delta (bisection: the rise falls
    from ≈ +2.3 at g0 = −4 to ≈ −1.6 at g0 = −3)."""
    def rise(g0: float) -> float:
        return _f(g0 - _step(g0, s), g0, s) - _f(g0, g0, s)
    lo, hi = -4.0, -3.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rise(mid) > delta else (lo, mid)
    g0 = 0.5 * (lo + hi)
    assert abs(rise(g0) - delta) < 1e-14
    return g0


def test_a_rise_below_the_rounding_tolerance_is_accepted():
    """ok ⇔ f(candidate) ≤ f + 1e-12·(1 + |f|): a full step that raises f (≈ 3.5) by 1.5e-12, under the
    tolerance ≈ 4.5e-12, is taken as it is (near the optimum such rises are rounding)."""
    s = 0.01
    g0 = _prior_mean_with_rise(1.5e-12, s)
    assert 1.5e-12 < 1e-12 * (1 + _f(g0, g0, s)) < 5e-12
    g = _newton_map(*_arms([g0], [s]), steps=1)
    assert abs(float(g) - (g0 - _step(g0, s))) < 1e-12


def test_a_rise_above_the_rounding_tolerance_is_rejected():
    """The same rule just over the edge: a full step raising f by 5e-12, over the tolerance
    1e-12·(1 + |f|) ≈ 4.5e-12 (and under 1e-12·(2 + |f|)), is refused; the half step is taken."""
    s = 0.01
    g0 = _prior_mean_with_rise(5e-12, s)
    assert 1e-12 * (1 + _f(g0, g0, s)) < 4.7e-12 and 1e-12 * (2 + _f(g0, g0, s)) > 5.3e-12
    g = _newton_map(*_arms([g0], [s]), steps=1)
    assert abs(float(g) - (g0 - _step(g0, s) / 2)) < 1e-12


def test_an_update_with_a_single_kept_arm_is_applied():
    """§3.2 Laplace update from the prior (g = 0, s = λ = 1) with one (sample, arm) pair, w = 1, r = 1 and
    one Newton step: g = 0.4 (see above) and s = 1 + σ(0.4)·(1 − σ(0.4)); the other arm is untouched."""
    ts = LogisticTS(LogisticTSConfig(2, 1, newton_steps=1))
    W = torch.tensor([[[1.0], [3.0]]], dtype=F64)
    ts.update(W, torch.tensor([[True, False]]), torch.tensor([1.0], dtype=F64))
    p = _sigmoid(0.4)
    assert torch.allclose(ts.g, torch.tensor([[0.4], [0.0]], dtype=F64), rtol=0, atol=1e-15)
    assert torch.allclose(ts.s, torch.tensor([[1 + p * (1 - p)], [1.0]], dtype=F64), rtol=0, atol=1e-15)
