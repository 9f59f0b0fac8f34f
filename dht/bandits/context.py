"""Bandit contexts: multiscale mean pooling (paper §7.1) and running normalisation (§7.2).

Dimension letters: B batch, T sequence positions (padding included), E embedding size,
P sequence parts (Σ seq_splits), Q embedding parts (Σ emb_splits).

Split rule, used for both axes: n elements split into s consecutive parts whose sizes differ by
at most one, larger parts first (as `torch.tensor_split`). When n < s some parts would be empty;
instead part j takes the single element holding its midpoint, index ⌊(2j + 1)·n / (2s)⌋, so a
sample with one real token repeats that token in every part (no zeros, no NaN).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from dht.bandits.linucb import STAT_DTYPE, check_finite, check_int, check_real, check_state_keys, check_tensor


def pooled_dim(seq_splits: tuple[int, ...] = (1, 2), emb_splits: tuple[int, ...] = (4, 8, 16)) -> int:
    """§7.1: size of the pooled context, Σ_s Σ_e s·e = (Σ seq_splits)·(Σ emb_splits)."""
    _check_splits("seq_splits", seq_splits)
    _check_splits("emb_splits", emb_splits)
    return sum(seq_splits) * sum(emb_splits)


def multiscale_pool(
    h: Tensor,
    mask: Tensor,
    seq_splits: tuple[int, ...] = (1, 2),
    emb_splits: tuple[int, ...] = (4, 8, 16),
    slices: int = 1,
) -> Tensor:
    """§7.1: multiscale mean pooling of a hidden state; h (B, T, E), mask (B, T) -> (B, P·Q), float64.

    mask is bool or 0/1 (True = real token); padding may sit anywhere and hold any value, NaN
    included. For each s in seq_splits the real tokens are split into s parts (see the module
    docstring) and averaged; each of the P averaged E-vectors is then split into e parts for each
    e in emb_splits and averaged. Output order: sequence part major, then embedding part
    (s = 1 first, then the parts of s = 2, ...). Defaults give 84 dims; (1, 2) × (2, 4, 8) gives
    42; (1,) × (4, 8) gives 12 (TSB, on a head's slice of h).

    slices > 1 pools each of ``slices`` equal slices of the embedding axis on its own (TSB: one slice
    per head) -> (B, slices, P·Q); the sequence parts are shared, so they are averaged once. The
    sequence averages are taken in h's dtype (float32 states stay float32 through the big product)
    and the small result is then promoted to float64.
    """
    _check_splits("seq_splits", seq_splits)
    _check_splits("emb_splits", emb_splits)
    check_tensor("h", h, (None, None, None), "(B, T, E)", floating=True)
    B, T, E = h.shape
    check_tensor("mask", mask, (B, T), "(B, T)")
    if slices < 1 or E % slices:
        raise ValueError(f"slices must be a positive divisor of the embedding size {E}, got {slices}")
    if mask.dtype != torch.bool:
        if mask.numel() and not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must be bool or hold only 0 and 1")
        mask = mask != 0
    n = mask.sum(dim=1)  # (B,) real tokens per sample
    if B and (n == 0).any():
        raise ValueError(f"mask has samples with no real tokens: {torch.nonzero(n == 0)[:, 0].tolist()}")
    h = h.masked_fill(~mask[..., None], 0.0)  # padding values never reach the sums
    rank = mask.cumsum(dim=1) - 1  # (B, T) position among the real tokens
    seq_w = torch.cat([_part_weights(rank, mask, n, s) for s in seq_splits], dim=1)  # (B, P, T)
    pooled = torch.bmm(seq_w.to(h.dtype), h).to(STAT_DTYPE)  # (B, P, E)
    # Every real token has a positive weight in some part, so a NaN/inf among them reaches `pooled`.
    check_finite("h (real tokens)", pooled)
    width = E // slices
    pooled = pooled.view(B, -1, slices, width).transpose(1, 2)  # (B, slices, P, width)
    out = pooled @ _embedding_weights(width, tuple(emb_splits), h.device).T  # (B, slices, P, Q)
    return out.reshape(B, -1) if slices == 1 else out.reshape(B, slices, -1)


@lru_cache(maxsize=64)
def _embedding_weights(width: int, emb_splits: tuple[int, ...], device: torch.device) -> Tensor:
    """(Q, width) averaging weights of the embedding parts; the same for every call of a shape, so kept."""
    pos = torch.arange(width, device=device)[None]  # (1, width)
    every = torch.ones(1, width, dtype=torch.bool, device=device)
    size = torch.tensor([width], device=device)
    return torch.cat([_part_weights(pos, every, size, e)[0] for e in emb_splits])


def _part_weights(rank: Tensor, valid: Tensor, n: Tensor, s: int) -> Tensor:
    """Averaging weights of s near-equal consecutive parts; rank, valid (B, L), n (B,) -> (B, s, L)."""
    q = (n // s).clamp_min(1)[:, None]  # (B, 1) size of the smaller parts
    rem = (n % s)[:, None]  # (B, 1) parts with one extra element
    big = rem * (q + 1)  # elements covered by the larger parts
    part = torch.where(rank < big, rank // (q + 1), rem + (rank - big) // q)  # (B, L)
    j = torch.arange(s, device=rank.device)[None, :, None]  # (1, s, 1)
    member = part[:, None, :] == j  # (B, s, L) split rule, n >= s
    mid = ((2 * j + 1) * n[:, None, None]) // (2 * s)  # (B, s, 1) midpoint element, n < s
    member = torch.where((n >= s)[:, None, None], member, rank[:, None, :] == mid)
    member = member & valid[:, None, :]
    w = member.to(STAT_DTYPE)
    return w / w.sum(dim=-1, keepdim=True)


def _check_splits(name: str, splits: object) -> None:
    """Raise ValueError unless splits is a non-empty tuple/list of positive ints."""
    if not isinstance(splits, (tuple, list)) or len(splits) == 0:
        raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {splits!r}")
    for s in splits:
        check_int(f"{name} entry", s, minimum=1)


class RunningNormalizer:
    """§7.2: per-feature running (Welford / Chan) mean and variance; normalises contexts.

    The variance is the population variance of everything seen. Before any data the mean is 0
    and the variance 1. In eval mode the statistics are frozen.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        """Start with no data: count 0, mean 0, M2 0 (float64), training mode."""
        check_int("dim", dim, minimum=1)
        check_real("eps", eps, minimum=0.0, strict=True)
        self.dim = dim
        self.eps = float(eps)
        self.count = 0  # rows seen
        self.mean = torch.zeros(dim, dtype=STAT_DTYPE)  # (dim,)
        self.m2 = torch.zeros(dim, dtype=STAT_DTYPE)  # (dim,) Σ (x − mean)²
        self.training = True

    @property
    def var(self) -> Tensor:
        """Population variance M2 / count, (dim,); ones before any data."""
        return self.m2 / self.count if self.count else torch.ones_like(self.m2)

    def __call__(self, x: Tensor) -> Tensor:
        """§7.2: (x − mean) / sqrt(var + eps) for x (B, dim), after updating with x in training mode."""
        check_tensor("x", x, (None, self.dim), "(B, dim)", floating=True)
        check_finite("x", x)
        if self.training and x.shape[0]:
            self.update(x)
        return ((x.to(STAT_DTYPE) - self.mean) / (self.var + self.eps).sqrt()).to(x.dtype)

    def update(self, x: Tensor) -> None:
        """Merge a batch x (B, dim) into the running statistics (Chan et al. pairwise update)."""
        check_tensor("x", x, (None, self.dim), "(B, dim)", floating=True)
        check_finite("x", x)
        nb = x.shape[0]
        if nb == 0:
            return
        x = x.to(STAT_DTYPE)
        mean_b = x.mean(dim=0)  # (dim,)
        m2_b = (x - mean_b).square().sum(dim=0)  # (dim,)
        total = self.count + nb
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (nb / total)
        self.m2 = self.m2 + m2_b + delta.square() * (self.count * nb / total)
        self.count = total

    def train(self, mode: bool = True) -> "RunningNormalizer":
        """Switch statistics updates on (mode=True) or off; returns self."""
        if not isinstance(mode, bool):
            raise ValueError(f"mode must be a bool, got {mode!r}")
        self.training = mode
        return self

    def eval(self) -> "RunningNormalizer":
        """Freeze the statistics (inference); returns self."""
        return self.train(False)

    def state_dict(self) -> dict:
        """Return a copy of the running statistics."""
        return {"dim": self.dim, "eps": self.eps, "count": self.count,
                "mean": self.mean.clone(), "m2": self.m2.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore statistics from `state_dict` of a normaliser with the same dim and eps."""
        check_state_keys(state, ("dim", "eps", "count", "mean", "m2"))
        if state["dim"] != self.dim or state["eps"] != self.eps:
            raise ValueError(
                f"state has dim={state['dim']}, eps={state['eps']}; expected {self.dim}, {self.eps}"
            )
        check_int("state['count']", state["count"], minimum=0)
        for key in ("mean", "m2"):
            check_tensor(f"state['{key}']", state[key], (self.dim,), "(dim,)")
            check_finite(f"state['{key}']", state[key])
        if (state["m2"] < 0).any():
            raise ValueError("state['m2'] must be non-negative")
        self.count = state["count"]
        self.mean = state["mean"].to(STAT_DTYPE).clone()
        self.m2 = state["m2"].to(STAT_DTYPE).clone()
