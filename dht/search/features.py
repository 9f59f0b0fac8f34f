"""Contexts and arm features of DHT's bandits (spec §3; paper §4.2, §7.1-7.2).

Contexts x come from multiscale mean pooling of a hidden state, normalised online (Welford):
UCB_L / UCB_cp pool the S1 state with seq {1,2} × emb {4,8,16} (84 dims); UCB_H pools the state at a
group start with seq {1,2} × emb {2,4,8} (42 dims) and appends a one-hot of the group index; TSB pools
each head's 1/N_h slice of the state with seq {1} × emb {4,8} (12 dims).

Arm features z are recomputed before each epoch from a no-grad pass of ``feature_samples`` training
samples: z of an (L, H) arm is the pooled state after its last layer with H random heads kept in each
dynamic group, averaged over samples; z of a head option H (UCB_H) averages the pooled states at the
group ends; z of head γ (TSB) averages the pooled γ-slice over all layers and passes. Each kind of z is
then standardised across its arms (a choice of ours: the bandits see how arms differ, on the scale of
the normalised contexts). The bandit's vector for a sample and an arm is w = [x; z_arm].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dht.bandits import RunningNormalizer, multiscale_pool, pooled_dim

TOP_POOL = ((1, 2), (4, 8, 16))  # UCB_L / UCB_cp: seq splits x embedding splits
HEAD_COUNT_POOL = ((1, 2), (2, 4, 8))  # UCB_H
HEAD_POOL = ((1,), (4, 8))  # TSB, on one head's slice
TOP_DIM = pooled_dim(*TOP_POOL)  # 84: x of UCB_L / UCB_cp, and each arm's z
HEAD_COUNT_DIM = pooled_dim(*HEAD_COUNT_POOL)  # 42: x of UCB_H, and each head option's z
HEAD_DIM = pooled_dim(*HEAD_POOL)  # 12: x of one head for TSB, and that head's z


def pool(h: Tensor, mask: Tensor, spec: tuple[tuple[int, ...], tuple[int, ...]]) -> Tensor:
    """Multiscale mean pooling of h (B, T, E) -> (B, D) in float64 on the CPU (§7.1): pooled where h
    is, then handed to the bandits, whose small float64 statistics always live on the CPU."""
    return multiscale_pool(h.detach(), mask, seq_splits=spec[0], emb_splits=spec[1]).cpu()


def head_contexts(h: Tensor, mask: Tensor, num_heads: int) -> Tensor:
    """TSB contexts: the pooled slice of the hidden state that belongs to each head, (B, N_h, HEAD_DIM), on the CPU."""
    pooled = multiscale_pool(h.detach(), mask, seq_splits=HEAD_POOL[0], emb_splits=HEAD_POOL[1], slices=num_heads)
    return pooled.cpu()


def standardise(z: Tensor) -> Tensor:
    """Centre and scale arm features (n_arms, D) across arms; constant columns become 0."""
    if z.shape[0] < 2:
        return torch.zeros_like(z)
    return (z - z.mean(0)) / z.std(0).clamp_min(1e-6)


@dataclass
class Contexts:
    """The three online normalisers (one per kind of context)."""

    top: RunningNormalizer
    head_count: RunningNormalizer
    head: RunningNormalizer

    @classmethod
    def create(cls) -> "Contexts":
        return cls(RunningNormalizer(TOP_DIM), RunningNormalizer(HEAD_COUNT_DIM), RunningNormalizer(HEAD_DIM))

    def train(self, mode: bool) -> None:
        for normaliser in (self.top, self.head_count, self.head):
            normaliser.train(mode)

    def state_dict(self) -> dict:
        return {"top": self.top.state_dict(), "head_count": self.head_count.state_dict(),
                "head": self.head.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.top.load_state_dict(state["top"])
        self.head_count.load_state_dict(state["head_count"])
        self.head.load_state_dict(state["head"])

    def x_top(self, h: Tensor, mask: Tensor) -> Tensor:
        """Normalised S1 context (B, TOP_DIM)."""
        return self.top(pool(h, mask, TOP_POOL))

    def x_head_count(self, h: Tensor, mask: Tensor) -> Tensor:
        """Normalised group-start context for UCB_H (B, HEAD_COUNT_DIM)."""
        return self.head_count(pool(h, mask, HEAD_COUNT_POOL))

    def x_heads(self, h: Tensor, mask: Tensor, num_heads: int) -> Tensor:
        """Normalised per-head contexts for TSB (B, N_h, HEAD_DIM)."""
        x = head_contexts(h, mask, num_heads)
        B, N, D = x.shape
        return self.head(x.reshape(B * N, D)).view(B, N, D)


def with_arm_features(x: Tensor, z: Tensor, extra: Tensor | None = None) -> Tensor:
    """w = [x; z_arm (; extra)] for every sample and arm: x (B, Dx) or (B, A, Dx), z (A, Dz) -> (B, A, D)."""
    B, A = x.shape[0], z.shape[0]
    x = x[:, None, :].expand(B, A, x.shape[-1]) if x.dim() == 2 else x
    parts = [x, z[None].expand(B, A, z.shape[-1])]
    if extra is not None:
        parts.append(extra[None, None, :].expand(B, A, extra.shape[-1]))
    return torch.cat(parts, -1)
