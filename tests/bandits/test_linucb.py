"""Tests of dht.bandits.linucb: Alg. 1 scores, ridge statistics, regret, numerical health, state."""

import pytest
import torch

from dht.bandits import LinUCB, LinUCBConfig

F64 = torch.float64




def _ridge(X, r, lam):
    """Closed form: θ = (λI + XᵀX)⁻¹ Xᵀr and A⁻¹ = (λI + XᵀX)⁻¹."""
    A = lam * torch.eye(X.shape[1], dtype=F64) + X.T @ X
    return torch.linalg.solve(A, X.T @ r), torch.linalg.inv(A)


def _fed(n_arms=4, dim=6, lam=0.7, rows=600, seed=0, alpha=1.0):
    """A bandit fed `rows` random (arm, w, r) triples in uneven batches; returns it and the data."""
    gen = torch.Generator().manual_seed(seed)
    arms = torch.randint(0, n_arms, (rows,), generator=gen)
    X = torch.randn(rows, dim, generator=gen, dtype=F64)
    r = torch.randn(rows, generator=gen, dtype=F64)
    bandit = LinUCB(LinUCBConfig(n_arms, dim, alpha=alpha, lam=lam))
    edges = [0, 1, 8, 50, 250, rows]  # batch sizes 1, 7, 42, 200, 350: one arm gets > 32 rows
    for lo, hi in zip(edges[:-1], edges[1:]):
        bandit.update(arms[lo:hi], X[lo:hi], r[lo:hi])
    return bandit, arms, X, r


def test_theta_equals_closed_form_ridge():
    bandit, arms, X, r = _fed()
    for a in range(4):
        theta, A_inv = _ridge(X[arms == a], r[arms == a], 0.7)
        torch.testing.assert_close(bandit.theta[a], theta, rtol=0, atol=1e-8)
        torch.testing.assert_close(bandit.A_inv[a], A_inv, rtol=0, atol=1e-8)
    assert bandit.counts.tolist() == torch.bincount(arms, minlength=4).tolist()


def test_one_batch_equals_row_by_row_updates():
    bandit, arms, X, r = _fed(rows=120)
    single = LinUCB(bandit.config)
    for i in range(120):
        single.update(arms[i : i + 1], X[i : i + 1], r[i : i + 1])
    torch.testing.assert_close(single.A_inv, bandit.A_inv, rtol=0, atol=1e-12)
    torch.testing.assert_close(single.b, bandit.b, rtol=0, atol=1e-12)


def test_scores_follow_algorithm_1_line_6():
    bandit, *_ = _fed(alpha=0.8)
    W = torch.randn(5, 4, 6, dtype=F64, generator=torch.Generator().manual_seed(1))
    expected = torch.empty(5, 4, dtype=F64)
    for i in range(5):
        for a in range(4):
            w = W[i, a]
            expected[i, a] = w @ bandit.theta[a] + 0.8 * torch.sqrt(w @ bandit.A_inv[a] @ w)
    torch.testing.assert_close(bandit.scores(W), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(bandit.scores(W.float()), expected.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bandit.scores(W, greedy=True), torch.einsum("bnd,nd->bn", W, bandit.theta))
    assert torch.equal(bandit.select(W), expected.argmax(dim=1))


@pytest.mark.parametrize("dim", [1, 2, 7])
def test_scores_for_small_and_odd_dims(dim):
    bandit, *_ = _fed(dim=dim, rows=80)
    W = torch.randn(9, 4, dim, dtype=F64, generator=torch.Generator().manual_seed(7))
    width = torch.einsum("bnd,nde,bne->bn", W, bandit.A_inv, W).sqrt()
    expected = torch.einsum("bnd,nd->bn", W, bandit.theta) + width
    torch.testing.assert_close(bandit.scores(W), expected, rtol=0, atol=1e-12)


def test_a_inv_indefinite_by_rounding_still_scores():
    """A loaded A⁻¹ whose smallest eigenvalue rounds below 0 is factored with a tiny ridge."""
    bandit = LinUCB(LinUCBConfig(1, 3))
    state = bandit.state_dict()
    state["A_inv"] = torch.tensor([[[1.0, 1.0, 0.5], [1.0, 1.0 - 1e-15, 0.5], [0.5, 0.5, 1.0]]], dtype=F64)
    assert torch.linalg.eigvalsh(state["A_inv"]).min() < 0
    bandit.load_state_dict(state)
    W = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]], dtype=F64)[:, None, :]
    expected = torch.tensor([[0.0], [1.0], [7.0**0.5]], dtype=F64)  # sqrt(wᵀA⁻¹w), θ = 0
    torch.testing.assert_close(bandit.scores(W), expected, rtol=0, atol=1e-5)


def test_alpha_zero_is_greedy():
    bandit, *_ = _fed(alpha=0.0)
    W = torch.randn(50, 4, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    assert torch.equal(bandit.scores(W), bandit.scores(W, greedy=True))
    explorer = LinUCB(LinUCBConfig(4, 6, alpha=5.0, lam=0.7))
    explorer.load_state_dict({**bandit.state_dict(), "config": vars(explorer.config)})
    assert not torch.equal(explorer.select(W), explorer.select(W, greedy=True))
    assert torch.equal(explorer.select(W, greedy=True), bandit.select(W))


def test_ties_go_to_lowest_index_and_allowed_is_respected():
    bandit = LinUCB(LinUCBConfig(5, 3))
    W = torch.ones(2, 5, 3)  # all arms identical: every score ties
    assert bandit.select(W).tolist() == [0, 0]
    allowed = torch.tensor([[False, False, True, True, False], [False, True, False, False, True]])
    assert bandit.select(W, allowed=allowed).tolist() == [2, 1]

    fed, *_ = _fed()
    W = torch.randn(200, 4, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    allowed = torch.rand(200, 4, generator=torch.Generator().manual_seed(4)) < 0.5
    allowed[:, 1] = True
    chosen = fed.select(W, allowed=allowed)
    assert allowed[torch.arange(200), chosen].all()
    masked = fed.scores(W).masked_fill(~allowed, float("-inf"))
    assert torch.equal(chosen, masked.argmax(dim=1))
    assert not torch.equal(chosen, fed.select(W))  # the mask changed some decisions


def test_regret_against_uniform_random_policy():
    """Acceptance: 20 arms, d = 20, noise σ = 0.1, 5,000 rounds, processed 10 rounds per update.

    Each round draws one unit context x shared by all arms (w_γ = x); arm γ pays θ*_γᵀx + noise
    with unit-norm θ*_γ. Regret is measured against the expected reward of the best arm; the
    random policy's regret is its exact expectation (mean over arms).
    """
    n, d, rounds, per_update = 20, 20, 5000, 10
    gen = torch.Generator().manual_seed(0)
    theta_star = torch.randn(n, d, generator=gen, dtype=F64)
    theta_star /= theta_star.norm(dim=1, keepdim=True)
    bandit = LinUCB(LinUCBConfig(n, d, alpha=1.0, lam=1.0))
    regret, random_regret = [], []
    for _ in range(rounds // per_update):
        x = torch.randn(per_update, d, generator=gen, dtype=F64)
        x /= x.norm(dim=1, keepdim=True)
        mu = x @ theta_star.T  # (B, N) expected rewards
        arms = bandit.select(x[:, None, :].expand(per_update, n, d))
        got = mu[torch.arange(per_update), arms]
        regret.append(mu.max(dim=1).values - got)
        random_regret.append(mu.max(dim=1).values - mu.mean(dim=1))
        bandit.update(arms, x, got + 0.1 * torch.randn(per_update, generator=gen, dtype=F64))
    regret, random_regret = torch.cat(regret), torch.cat(random_regret)
    assert regret.sum() <= 0.25 * random_regret.sum()
    assert regret[-1000:].sum() <= 0.10 * random_regret[-1000:].sum()


def test_a_inv_healthy_after_100k_updates():
    """100,000 updates in batches of 10,000 with contexts of widely varying scale."""
    n, d, lam = 4, 10, 1.0
    gen = torch.Generator().manual_seed(5)
    bandit = LinUCB(LinUCBConfig(n, d, lam=lam))
    gram = torch.zeros(n, d, d, dtype=F64)
    for _ in range(10):
        arms = torch.randint(0, n, (10_000,), generator=gen)
        scale = 10 ** torch.empty(10_000, 1, dtype=F64).uniform_(-2, 2, generator=gen)
        X = scale * torch.randn(10_000, d, generator=gen, dtype=F64)
        X[:, 1] = X[:, 0] + 1e-3 * X[:, 1]  # two nearly collinear features
        bandit.update(arms, X, torch.randn(10_000, generator=gen, dtype=F64))
        gram.index_put_((arms,), X[:, :, None] * X[:, None, :], accumulate=True)
    A_inv = bandit.A_inv
    assert torch.isfinite(A_inv).all() and torch.isfinite(bandit.theta).all()
    assert torch.equal(A_inv, A_inv.mT)
    assert (torch.linalg.eigvalsh(A_inv) > 0).all()
    exact = torch.linalg.inv(lam * torch.eye(d, dtype=F64) + gram)
    torch.testing.assert_close(A_inv, exact, rtol=1e-6, atol=1e-12)
    assert int(bandit.counts.sum()) == 100_000


def test_state_dict_round_trip_gives_same_decisions():
    bandit, *_ = _fed()
    state = bandit.state_dict()
    copy = LinUCB(bandit.config)
    copy.load_state_dict(state)
    W = torch.randn(100, 4, 6, generator=torch.Generator().manual_seed(6))
    assert torch.equal(copy.select(W), bandit.select(W))
    assert torch.equal(copy.scores(W), bandit.scores(W))
    bandit.update(torch.zeros(50, dtype=torch.long), torch.randn(50, 6, dtype=F64), torch.ones(50, dtype=F64))
    assert torch.equal(state["b"], copy.b)  # the saved state is a copy, not a view
    assert not torch.equal(copy.b, bandit.b)
