"""Disjoint LinUCB (Li et al. 2010; paper §3.1, Algorithm 1), batched on torch.

Symbols (paper): per arm γ, A_γ = λI + Σ w wᵀ (d×d), b_γ = Σ r w, θ_γ = A_γ⁻¹ b_γ,
score f = wᵀθ + α·sqrt(wᵀA⁻¹w). Only A⁻¹ is stored; it is kept up to date by the
Woodbury identity (Sherman–Morrison for one row), never re-inverted. Scoring uses the
Cholesky factor of A⁻¹, recomputed once per update (not per decision).

Dimension letters: B batch (samples), N arms, d vector size, P arms present in an update,
m rows of the busiest of them, C rows of one Woodbury chunk.

`rows_by_arm` and the input checks at the bottom are shared by the other bandit modules.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

STAT_DTYPE = torch.float64  # dtype of every learned statistic
_SCORE_BLOCK = 1 << 21  # elements of W scored per block (~8 MB in float32)


@dataclass(frozen=True)
class LinUCBConfig:
    """Settings of disjoint LinUCB (Alg. 1); validated on construction."""

    n_arms: int  # |Z|, number of arms γ
    dim: int  # d, size of each per-arm vector w = [x; z_γ] (+ extra features)
    alpha: float = 1.0  # α, exploration weight of the confidence width (0 = greedy)
    lam: float = 1.0  # λ, ridge regulariser: A_γ starts at λI

    def __post_init__(self) -> None:
        check_int("n_arms", self.n_arms, minimum=1)
        check_int("dim", self.dim, minimum=1)
        check_real("alpha", self.alpha, minimum=0.0, strict=False)
        check_real("lam", self.lam, minimum=0.0, strict=True)


class LinUCB:
    """Disjoint LinUCB with one ridge model per arm (Alg. 1), float64 statistics.

    Inputs of any floating dtype are accepted; float32 inputs are scored in float32 against
    float32 copies of the float64 statistics (fast; exact ordering is not promised for
    near-ties below float32 precision), float64 inputs in float64.
    """

    def __init__(self, config: LinUCBConfig):
        """Alg. 1, line 1: A_γ⁻¹ = I/λ and b_γ = 0 for every arm."""
        if not isinstance(config, LinUCBConfig):
            raise ValueError(f"config must be a LinUCBConfig, got {type(config).__name__}")
        self.config = config
        n, d = config.n_arms, config.dim
        eye = torch.eye(d, dtype=STAT_DTYPE)
        self.A_inv = (eye / config.lam).repeat(n, 1, 1)  # (N, d, d)
        self.b = torch.zeros(n, d, dtype=STAT_DTYPE)  # (N, d)
        self.counts = torch.zeros(n, dtype=torch.long)  # (N,) updates received per arm
        self._refresh()

    @property
    def theta(self) -> Tensor:
        """Alg. 1, line 5: θ_γ = A_γ⁻¹ b_γ, shape (N, d)."""
        return self._theta

    def scores(self, W: Tensor, greedy: bool = False) -> Tensor:
        """Alg. 1, line 6: f = wᵀθ + α·sqrt(wᵀA⁻¹w) for every sample and arm; W (B, N, d) -> (B, N)."""
        cfg = self.config
        check_tensor("W", W, (None, cfg.n_arms, cfg.dim), "(B, n_arms, dim)", floating=True)
        alpha = 0.0 if greedy else cfg.alpha
        theta, L_left, L_right = self._stats_as(W.dtype)  # (N, 1, d), (N, d, h), (N, d − h, d − h)
        h = L_left.shape[-1]
        B = W.shape[0]
        out = torch.empty(B, cfg.n_arms, dtype=W.dtype)
        rows = max(1, _SCORE_BLOCK // (cfg.n_arms * cfg.dim))
        for start in range(0, B, rows):  # blocks keep the intermediates small and cache-warm
            Wt = W[start : start + rows].transpose(0, 1)  # (N, b, d)
            f = torch.linalg.vecdot(Wt, theta)  # (N, b): wᵀθ
            if alpha:
                # wᵀA⁻¹w = ‖wᵀL‖² with A⁻¹ = LLᵀ; L is lower-triangular, so columns h: of wᵀL
                # use only w[h:]: a quarter fewer multiply-adds than wᵀA⁻¹w at h = d/2.
                u_left = torch.matmul(Wt, L_left)  # (N, b, h)
                u_right = torch.matmul(Wt[..., h:], L_right)  # (N, b, d − h)
                width = torch.linalg.vecdot(u_left, u_left) + torch.linalg.vecdot(u_right, u_right)
                f += alpha * width.sqrt_()  # α·sqrt(wᵀA⁻¹w)
            out[start : start + rows] = f.T
        if B and not torch.isfinite(out).all():
            # A NaN/inf anywhere in W always makes its score non-finite; find which it is.
            check_finite("W", W)
            raise ValueError("scores overflow: W has values too large for its dtype")
        return out

    def select(self, W: Tensor, greedy: bool = False, allowed: Tensor | None = None) -> Tensor:
        """Alg. 1, lines 4-7: argmax_γ f per sample (ties -> lowest index); W (B, N, d) -> (B,) long.

        allowed: optional (B, N) bool; arms marked False are never chosen.
        """
        f = self.scores(W, greedy=greedy)  # (B, N)
        if allowed is not None:
            check_tensor("allowed", allowed, (W.shape[0], self.config.n_arms), "(B, n_arms)")
            if allowed.dtype != torch.bool:
                raise ValueError(f"allowed must be a bool tensor, got dtype {allowed.dtype}")
            if allowed.numel() and not allowed.any(dim=1).all():
                raise ValueError("allowed has a row with no allowed arm")
            f = f.masked_fill(~allowed, -math.inf)
        return torch.argmax(f, dim=1)  # argmax returns the first maximum: lowest index wins

    def update(self, arms: Tensor, w: Tensor, rewards: Tensor) -> None:
        """Alg. 1, lines 8-9: A_γ += w wᵀ, b_γ += r w for a batch; A⁻¹ via Woodbury, no re-inversion.

        arms (B,) integer arm indices, w (B, d) the chosen arms' vectors, rewards (B,).
        """
        cfg = self.config
        check_tensor("w", w, (None, cfg.dim), "(B, dim)", floating=True)
        B = w.shape[0]
        check_arms("arms", arms, B, cfg.n_arms)
        check_tensor("rewards", rewards, (B,), "(B,)", floating=True)
        check_finite("w", w)
        check_finite("rewards", rewards)
        if B == 0:
            return
        arms = arms.long()
        w = w.to(STAT_DTYPE)
        self.b.index_add_(0, arms, rewards.to(STAT_DTYPE)[:, None] * w)  # line 9
        self.counts += torch.bincount(arms, minlength=cfg.n_arms)
        present, X = rows_by_arm(arms, w, cfg.n_arms)  # (P,), (P, m, d) zero-padded
        self.A_inv[present] = _woodbury_add_rows(self.A_inv[present], X)  # line 8
        self._refresh()

    def state_dict(self) -> dict:
        """Return a copy of the learned state (and the config it belongs to)."""
        return {
            "config": dataclasses.asdict(self.config),
            "A_inv": self.A_inv.clone(),
            "b": self.b.clone(),
            "counts": self.counts.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state produced by `state_dict` of a LinUCB with the same config."""
        check_state_keys(state, ("config", "A_inv", "b", "counts"))
        if LinUCBConfig(**state["config"]) != self.config:
            raise ValueError(f"state config {state['config']} differs from {self.config}")
        n, d = self.config.n_arms, self.config.dim
        check_tensor("state['A_inv']", state["A_inv"], (n, d, d), "(n_arms, dim, dim)")
        check_tensor("state['b']", state["b"], (n, d), "(n_arms, dim)")
        check_tensor("state['counts']", state["counts"], (n,), "(n_arms,)")
        check_finite("state['A_inv']", state["A_inv"])
        check_finite("state['b']", state["b"])
        self.A_inv = state["A_inv"].to(STAT_DTYPE).clone()
        self.b = state["b"].to(STAT_DTYPE).clone()
        self.counts = state["counts"].long().clone()
        self._refresh()

    def _refresh(self) -> None:
        """Recompute θ = A⁻¹b and drop the cached scoring copies after the state changed."""
        self._theta = (self.A_inv @ self.b[..., None])[..., 0]  # (N, d)
        self._stats_cache: dict[torch.dtype, tuple[Tensor, Tensor, Tensor]] = {}

    def _stats_as(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Scoring copies in `dtype`, cached until the next update: θ (N, 1, d) and the blocks
        L[:, :, :h] (N, d, h) and L[:, h:, h:] (N, d − h, d − h) of A⁻¹ = LLᵀ, h = d // 2."""
        if dtype not in self._stats_cache:
            L = _cholesky(self.A_inv)  # (N, d, d) lower-triangular
            h = self.config.dim // 2
            self._stats_cache[dtype] = (
                self._theta[:, None, :].to(dtype),
                L[..., :h].to(dtype).contiguous(),
                L[:, h:, h:].to(dtype).contiguous(),
            )
        return self._stats_cache[dtype]


def _cholesky(A_inv: Tensor) -> Tensor:
    """Lower Cholesky factor L of A⁻¹ = LLᵀ, (N, d, d); adds a tiny ridge if rounding broke PD."""
    L, info = torch.linalg.cholesky_ex(A_inv)
    if info.any():  # only after extreme updates; a relative 1e-12 ridge changes no score visibly
        scale = A_inv.diagonal(dim1=-2, dim2=-1).amax(dim=-1)[:, None, None]  # (N, 1, 1)
        L = torch.linalg.cholesky(A_inv + 1e-12 * scale * torch.eye(A_inv.shape[-1], dtype=A_inv.dtype))
    return L


def rows_by_arm(arms: Tensor, w: Tensor, n_arms: int) -> tuple[Tensor, Tensor]:
    """Group the batch rows by arm: present arms (P,) and their rows (P, m, d), zero-padded."""
    counts = torch.bincount(arms, minlength=n_arms)  # (N,)
    order = torch.argsort(arms, stable=True)
    sorted_arms = arms[order]
    starts = torch.cumsum(counts, 0) - counts  # first sorted row of each arm
    pos = torch.arange(arms.shape[0]) - starts[sorted_arms]  # row index within its arm
    X = w.new_zeros(n_arms, int(counts.max()), w.shape[1])  # (N, m, d)
    X[sorted_arms, pos] = w[order]
    present = torch.nonzero(counts, as_tuple=True)[0]
    return present, X[present]


def _woodbury_add_rows(A_inv: Tensor, X: Tensor) -> Tensor:
    """Woodbury: (A + XᵀX)⁻¹ = A⁻¹ − K (I + X K)⁻¹ Kᵀ with K = A⁻¹Xᵀ; A_inv (P, d, d), X (P, m, d).

    Rows go in chunks of at most max(d, 32) so every solve stays small; zero rows change
    nothing, so arms with fewer rows are simply padded. The update is written as A⁻¹ − VᵀV with
    V = L⁻¹Kᵀ (L the Cholesky factor of I + XK), which keeps A⁻¹ symmetric.
    """
    d = A_inv.shape[-1]
    chunk = max(d, 32)
    for start in range(0, X.shape[1], chunk):
        Xc = X[:, start : start + chunk]  # (P, C, d)
        K = A_inv @ Xc.mT  # (P, d, C)
        S = Xc @ K  # (P, C, C)
        S.diagonal(dim1=-2, dim2=-1).add_(1.0)  # I + X A⁻¹ Xᵀ, eigenvalues >= 1
        L = torch.linalg.cholesky(S)
        V = torch.linalg.solve_triangular(L, K.mT, upper=False)  # (P, C, d)
        A_inv = A_inv - V.mT @ V
        A_inv = 0.5 * (A_inv + A_inv.mT)  # remove rounding asymmetry
    return A_inv


# ----- input checks shared by the bandit modules -----


def check_tensor(
    name: str, x: object, shape: tuple[int | None, ...], legend: str, floating: bool = False
) -> None:
    """Raise ValueError unless x is a tensor of the given shape (None = any size)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    expected = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
    if x.ndim != len(shape) or any(s is not None and s != g for s, g in zip(shape, x.shape)):
        raise ValueError(
            f"{name} must have shape {legend} = {expected}, got {tuple(x.shape)}"
        )
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_finite(name: str, x: Tensor) -> None:
    """Raise ValueError if x holds NaN or ±inf."""
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def check_arms(name: str, arms: object, batch: int, n_arms: int) -> None:
    """Raise ValueError unless arms is an integer (batch,) tensor with values in [0, n_arms)."""
    check_tensor(name, arms, (batch,), "(B,)")
    if arms.is_floating_point() or arms.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise ValueError(f"{name} must be an integer tensor, got dtype {arms.dtype}")
    if arms.numel() and (arms.min() < 0 or arms.max() >= n_arms):
        raise ValueError(
            f"{name} out of range: values must lie in [0, {n_arms}), "
            f"got min {int(arms.min())}, max {int(arms.max())}"
        )


def check_state_keys(state: object, keys: tuple[str, ...]) -> None:
    """Raise ValueError unless state is a dict holding every key."""
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict, got {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"state is missing keys {missing}")


def check_int(name: str, value: object, minimum: int) -> None:
    """Raise ValueError unless value is an int (not bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_real(name: str, value: object, minimum: float, strict: bool) -> None:
    """Raise ValueError unless value is a finite real >= minimum (> minimum if strict)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
