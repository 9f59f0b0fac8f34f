"""Numerical safeguards of dht.bandits.linucb (paper §3.1, Alg. 1): the relative ridge of the scoring
Cholesky factor, the Woodbury chunk size, and rows_by_arm on an empty batch."""

import math

import torch

from dht.bandits import LinUCB, LinUCBConfig
from dht.bandits.linucb import rows_by_arm

F64 = torch.float64


def test_a_singular_a_inv_is_scored_with_a_ridge_relative_to_its_largest_diagonal():
    """When rounding leaves A⁻¹ not positive definite, L is the Cholesky factor of A⁻¹ + 1e-12·max diag(A⁻¹)·I.

    A⁻¹ = c·[[1, 1], [1, 1]] with c = 1e6 is exactly singular (its Cholesky factor hits a zero pivot).
    With the ridge r = 1e-12·c = 1e-6 the widths are sqrt(wᵀ(A⁻¹ + rI)w): sqrt(4c + 2r) ≈ 2000 for
    w = (1, 1) and sqrt(2r) ≈ 1.414e-3 for w = (1, −1). (A ridge 1e-12 / c would vanish next to c.)
    """
    ucb = LinUCB(LinUCBConfig(1, 2))
    c = 1e6
    ucb.load_state_dict({**ucb.state_dict(), "A_inv": c * torch.ones(1, 2, 2, dtype=F64)})
    W = torch.tensor([[[1.0, 1.0]], [[1.0, -1.0]]], dtype=F64)  # (B=2, N=1, d=2); θ = 0
    f = ucb.scores(W)[:, 0]
    assert math.isclose(float(f[0]), math.sqrt(4 * c + 2e-6), rel_tol=1e-12)
    assert math.isclose(float(f[1]), math.sqrt(2e-6), rel_tol=1e-3)


def test_woodbury_takes_rows_in_chunks_of_at_most_max_d_32(monkeypatch):
    """33 rows for one arm with d = 2 go through Woodbury as a chunk of 32 rows and a chunk of 1 (two
    Cholesky solves of 32×32 and 1×1, never one of 33×33), and A⁻¹ is still (λI + XᵀX)⁻¹ (Alg. 1 line 8)."""
    sizes = []
    cholesky = torch.linalg.cholesky

    def spy(S, *args, **kwargs):
        sizes.append(tuple(S.shape))
        return cholesky(S, *args, **kwargs)

    X = torch.randn(33, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    ucb = LinUCB(LinUCBConfig(2, 2))
    monkeypatch.setattr(torch.linalg, "cholesky", spy)
    ucb.update(torch.ones(33, dtype=torch.long), X, torch.ones(33, dtype=F64))
    monkeypatch.undo()
    assert sizes == [(1, 32, 32), (1, 1, 1)]
    assert torch.allclose(ucb.A_inv[1], torch.linalg.inv(torch.eye(2, dtype=F64) + X.T @ X), rtol=1e-10)
    assert torch.equal(ucb.A_inv[0], torch.eye(2, dtype=F64))


def test_rows_by_arm_of_an_empty_batch_has_no_arms():
    """rows_by_arm groups rows per arm; with no rows there is no present arm and nothing to update."""
    present, X = rows_by_arm(torch.zeros(0, dtype=torch.long), torch.zeros(0, 3, dtype=F64), n_arms=4)
    assert present.tolist() == [] and X.shape == (0, 0, 3)
