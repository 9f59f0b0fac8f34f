"""Logistic Thompson-sampling semi-bandit (paper §3.2; Chapelle & Li 2011, Alg. 3), batched on torch.

Symbols (paper): per arm γ a Bayesian logistic model with mean g_γ and diagonal precision s_γ
(Laplace approximation). Selection draws p_γ ~ N(g_γ, diag(s_γ)⁻¹) per sample, scores σ(p_γᵀw_γ)
and keeps the top K arms. The paper initialises s = 0 (infinite variance); this module starts
at s = λ, a proper prior.

Dimension letters: B batch (samples), N arms, d vector size, P arms with data in an update,
m rows of the busiest of them, T line-search candidates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dht.bandits.linucb import (
    STAT_DTYPE,
    check_finite,
    check_int,
    check_real,
    check_state_keys,
    check_tensor,
    rows_by_arm,
)

_STEP_SIZES = (1.0, 0.5, 0.25, 0.125, 0.0625)  # backtracking candidates for each Newton step


@dataclass(frozen=True)
class LogisticTSConfig:
    """Settings of the logistic Thompson-sampling semi-bandit (§3.2); validated on construction."""

    n_arms: int  # |Z|, number of arms γ (heads of a layer group in DHT)
    dim: int  # d, size of each per-arm vector w_γ
    lam: float = 1.0  # λ, prior precision: s_γ starts at λ (paper's s = 0 is improper)
    newton_steps: int = 3  # Newton iterations on g_γ per update

    def __post_init__(self) -> None:
        check_int("n_arms", self.n_arms, minimum=1)
        check_int("dim", self.dim, minimum=1)
        check_real("lam", self.lam, minimum=0.0, strict=True)
        check_int("newton_steps", self.newton_steps, minimum=1)


class LogisticTS:
    """Combinatorial Thompson sampling with one diagonal-Laplace logistic model per arm (§3.2).

    All randomness comes from `generator` (a fresh default-seeded torch.Generator if None).
    """

    def __init__(self, config: LogisticTSConfig, generator: torch.Generator | None = None):
        """§3.2 initialisation: g_γ = 0, s_γ = λ for every arm and feature."""
        if not isinstance(config, LogisticTSConfig):
            raise ValueError(f"config must be a LogisticTSConfig, got {type(config).__name__}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.config = config
        self.generator = torch.Generator() if generator is None else generator
        self.g = torch.zeros(config.n_arms, config.dim, dtype=STAT_DTYPE)  # (N, d) posterior mean
        self.s = torch.full_like(self.g, float(config.lam))  # (N, d) diagonal precision

    def logits(self, W: Tensor, greedy: bool = False) -> Tensor:
        """§3.2: pᵀw, p ~ N(g, diag(s)⁻¹) drawn per sample and arm (gᵀw if greedy); W (B, N, d) -> (B, N).

        Only the scalar pᵀw enters the score, and for one draw of p it is exactly
        N(gᵀw, Σ_j w_j²/s_j), so that scalar is drawn directly (d times fewer random numbers).
        """
        cfg = self.config
        check_tensor("W", W, (None, cfg.n_arms, cfg.dim), "(B, n_arms, dim)", floating=True)
        if greedy:
            z = torch.linalg.vecdot(W, self.g.to(W.dtype))  # (B, N)
        else:
            root_s = self.s.sqrt()
            U = W * root_s.reciprocal().to(W.dtype)  # (B, N, d): w_j / sqrt(s_j)
            mean = torch.linalg.vecdot(U, (self.g * root_s).to(W.dtype))  # gᵀw
            std = torch.linalg.vecdot(U, U).sqrt()  # sqrt(Σ_j w_j² / s_j)
            eps = torch.randn(mean.shape, generator=self.generator, dtype=STAT_DTYPE)  # (B, N)
            z = mean + std * eps.to(W.dtype)
        if z.numel() and not torch.isfinite(z).all():
            check_finite("W", W)  # a NaN/inf in W always makes its logit non-finite
            raise ValueError("logits overflow: W has values too large for its dtype")
        return z

    def select(self, W: Tensor, k: int | Tensor, greedy: bool = False) -> Tensor:
        """§3.2: keep the top k[i] arms of σ(p_γᵀw_γ) per sample; W (B, N, d) -> (B, N) bool mask.

        k: int or (B,) integer tensor with 1 <= k <= n_arms. Ranking uses the logits (σ is
        monotone, and logits do not saturate); ties go to the lowest arm index.
        """
        z = self.logits(W, greedy=greedy)  # (B, N)
        B, n = z.shape
        k = _check_k(k, B, n)
        order = torch.sort(z, dim=1, descending=True, stable=True).indices  # (B, N)
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(n).expand(B, n))  # rank of each arm in its row
        return ranks < k[:, None]

    def select_shared(self, W: Tensor, k: int | Tensor) -> Tensor:
        """Greedy selection with one arm set per head count (ours, issue 23): the samples whose k[i] is
        equal keep the same k arms, those with the highest summed expected reward Σ_i σ(g_γᵀw_iγ) over
        those samples. W (B, N, d) -> (B, N) bool mask, as ``select``.

        Why: under the semi-bandit's reward model the expected number of rewarded arms of a set S is
        Σ_i Σ_{γ∈S} σ(g_γᵀw_iγ); with one set for several samples it is largest for the top k of the
        per-arm sums. One set lets the samples' attention run as one dense product instead of head by
        head over gathered rows (``SelfAttention._per_sample_heads``), whose gathers cost on a CPU
        most of what the dropped heads save (``bench/encoder_speed.py``). Ties go to the lowest index.
        """
        z = self.logits(W, greedy=True)  # (B, N)
        B, n = z.shape
        k = _check_k(k, B, n)
        kept = torch.zeros(B, n, dtype=torch.bool)
        for count in k.unique().tolist():
            rows = torch.nonzero(k == count).flatten()
            expected = torch.sigmoid(z.index_select(0, rows).to(STAT_DTYPE)).sum(0)  # (N,)
            top = torch.sort(expected, descending=True, stable=True).indices[:count]
            kept[rows[:, None], top[None, :]] = True
        return kept

    def update(self, W: Tensor, kept: Tensor, rewards: Tensor) -> None:
        """§3.2 Laplace update: Newton steps on g with the diagonal prior, then s += Σ σ(1−σ) w².

        W (B, N, d); kept (B, N) bool, the arms each sample ran; rewards in {0, 1}, either (B,)
        (every kept arm of sample i gets rewards[i], as DHT uses it) or (B, N) (one reward per
        arm; entries of arms not kept are ignored).
        """
        cfg = self.config
        check_tensor("W", W, (None, cfg.n_arms, cfg.dim), "(B, n_arms, dim)", floating=True)
        B = W.shape[0]
        check_tensor("kept", kept, (B, cfg.n_arms), "(B, n_arms)")
        if kept.dtype != torch.bool:
            raise ValueError(f"kept must be a bool tensor, got dtype {kept.dtype}")
        per_arm = isinstance(rewards, Tensor) and rewards.ndim == 2
        shape = (B, cfg.n_arms) if per_arm else (B,)
        check_tensor("rewards", rewards, shape, "(B,) or (B, n_arms)")
        check_finite("W", W)
        check_finite("rewards", rewards)
        if rewards.numel() and not ((rewards == 0) | (rewards == 1)).all():
            raise ValueError("rewards must be binary: every value must be 0 or 1")
        r = rewards.to(STAT_DTYPE)
        r = r[:, None].expand(B, cfg.n_arms) if r.ndim == 1 else r  # (B, N) targets in {0, 1}
        sample, arm = torch.nonzero(kept, as_tuple=True)  # the (sample, arm) pairs that are data
        if sample.numel() == 0:
            return
        r_kept = r[sample, arm, None]  # (K, 1)
        rows = torch.cat([W[sample, arm].to(STAT_DTYPE), r_kept, torch.ones_like(r_kept)], dim=1)  # [w, r, 1]
        present, packed = rows_by_arm(arm, rows, cfg.n_arms)  # (P,), (P, m, d + 2) zero-padded
        X, R, M = packed[..., :-2], packed[..., -2], packed[..., -1]  # (P, m, d), (P, m), (P, m)
        g, s = self.g[present], self.s[present]  # (P, d)
        g_new = _newton_map(g, s, X, R, M, cfg.newton_steps)
        p = torch.sigmoid(torch.matmul(X, g_new[..., None])[..., 0])  # (P, m); padding rows have X = 0
        self.s[present] = s + torch.matmul((M * p * (1 - p))[:, None, :], X.square())[:, 0]
        self.g[present] = g_new

    def state_dict(self) -> dict:
        """Return a copy of the posterior, the config and the generator state."""
        return {
            "config": dataclasses.asdict(self.config),
            "g": self.g.clone(),
            "s": self.s.clone(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from `state_dict`, generator included: same state -> same draws."""
        check_state_keys(state, ("config", "g", "s", "generator"))
        if LogisticTSConfig(**state["config"]) != self.config:
            raise ValueError(f"state config {state['config']} differs from {self.config}")
        n, d = self.config.n_arms, self.config.dim
        for key in ("g", "s"):
            check_tensor(f"state['{key}']", state[key], (n, d), "(n_arms, dim)")
            check_finite(f"state['{key}']", state[key])
        if not isinstance(state["generator"], Tensor) or state["generator"].dtype != torch.uint8:
            raise ValueError("state['generator'] must be a uint8 tensor from torch.Generator.get_state()")
        if not (state["s"] > 0).all():
            raise ValueError("state['s'] must be positive (it is a precision)")
        self.g = state["g"].to(STAT_DTYPE).clone()
        self.s = state["s"].to(STAT_DTYPE).clone()
        self.generator.set_state(state["generator"].clone())


def _newton_map(g_old: Tensor, s: Tensor, X: Tensor, R: Tensor, M: Tensor, steps: int) -> Tensor:
    """§3.2 (Chapelle & Li Alg. 3): argmin_g ½Σ_j s_j(g_j − g_old,j)² + Σ_i log(1 + exp(−y_i gᵀw_i)).

    y = 2r − 1. Full-Hessian Newton steps for all arms at once, each with backtracking so the
    objective never increases. g_old, s (P, d); X (P, m, d) each arm's rows, zero-padded;
    R (P, m) rewards in {0, 1}; M (P, m) 1 for real rows, 0 for padding.
    """
    g = g_old.clone()
    loss = _objective(g[..., None], g_old, s, X, R, M)[:, 0]  # (P,)
    t = torch.tensor(_STEP_SIZES, dtype=g.dtype)  # (T,)
    for _ in range(steps):
        p = torch.sigmoid(torch.matmul(X, g[..., None])[..., 0])  # (P, m)
        grad = s * (g - g_old) + torch.matmul(((p - R) * M)[:, None, :], X)[:, 0]  # (P, d)
        H = torch.matmul(X.mT * (M * p * (1 - p))[:, None, :], X)  # (P, d, d) data Hessian
        H.diagonal(dim1=-2, dim2=-1).add_(s)
        step = torch.cholesky_solve(grad[..., None], torch.linalg.cholesky(H))  # (P, d, 1)
        cand = g[..., None] - step * t  # (P, d, T) candidate means
        cand_loss = _objective(cand, g_old, s, X, R, M)  # (P, T)
        # Near the optimum the decrease is below rounding; allow a change at rounding level.
        ok = cand_loss <= (loss + 1e-12 * (1 + loss.abs()))[:, None]  # (P, T)
        first = torch.argmax(ok.to(torch.int8), dim=1)  # largest step that does not increase
        accept = ok.any(dim=1)  # (P,) arms where some step helps
        arange = torch.arange(g.shape[0])
        g = torch.where(accept[:, None], cand[arange, :, first], g)
        loss = torch.where(accept, cand_loss[arange, first], loss)
    return g


def _objective(G: Tensor, g_old: Tensor, s: Tensor, X: Tensor, R: Tensor, M: Tensor) -> Tensor:
    """§3.2 objective for T candidate means per arm, G (P, d, T) -> (P, T)."""
    z = torch.matmul(X, G)  # (P, m, T)
    y = (2 * R - 1)[..., None]  # (P, m, 1) labels in {−1, +1}
    nll = (M[..., None] * F.softplus(-y * z)).sum(dim=1)  # (P, T): real rows only
    return 0.5 * (s[..., None] * (G - g_old[..., None]).square()).sum(dim=1) + nll


def _check_k(k: int | Tensor, batch: int, n_arms: int) -> Tensor:
    """Turn k into a (B,) long tensor, raising ValueError unless 1 <= k <= n_arms."""
    if isinstance(k, Tensor):
        check_tensor("k", k, (batch,), "(B,)")
        if k.is_floating_point() or k.dtype == torch.bool:
            raise ValueError(f"k must be an integer tensor, got dtype {k.dtype}")
        k = k.long()
    elif isinstance(k, int) and not isinstance(k, bool):
        k = torch.full((batch,), k, dtype=torch.long)
    else:
        raise ValueError(f"k must be an int or a (B,) integer tensor, got {type(k).__name__}")
    if k.numel() and (k.min() < 1 or k.max() > n_arms):
        raise ValueError(
            f"k out of range: need 1 <= k <= n_arms = {n_arms}, got min {int(k.min())}, max {int(k.max())}"
        )
    return k
