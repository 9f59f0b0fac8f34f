"""Where an arm's layers run and how a group of layers runs with per-sample heads.

Dimension legend: B batch, T tokens, E hidden, N_h heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dht.flops import full_forward_flops, plan_forward_flops
from dht.model import DynamicEncoder, EncoderConfig, ExecutionPlan
from dht.model.encoder import HeadParts, Heads
from dht.search.arms import Arm, SearchConfig


@dataclass(frozen=True)
class Layout:
    """The layers an arm runs: an all-heads prefix, head-decision groups, an all-heads suffix."""

    prefix: tuple[int, ...]  # run with every head (the b context layers)
    groups: tuple[tuple[int, ...], ...]  # one head decision per group (c layers each, or fewer)
    suffix: tuple[int, ...]  # P-DHT's top k layers, every head

    @property
    def depth(self) -> int:
        return len(self.prefix) + sum(len(g) for g in self.groups) + len(self.suffix)


def arm_layout(search: SearchConfig, arm: Arm, phase_two: bool) -> Layout:
    """Alg. 2: the first b layers, then groups of c up to depth L (P-DHT: bottom groups, then the top k)."""
    c = search.c
    if phase_two:  # P-DHT: bottom d layers in groups of c (the first takes the remainder), top k last
        bottom = arm.depth - arm.top
        first = bottom - c * ((bottom - 1) // c) if bottom else 0
        cuts = [0] + ([first] if first else []) + list(range(first + c, bottom + 1, c))
        groups = tuple(tuple(range(a, z)) for a, z in zip(cuts, cuts[1:]))
        top = tuple(range(search.num_layers - arm.top, search.num_layers))
        return Layout((), groups, top)
    prefix = tuple(range(search.b))
    groups = tuple(tuple(range(start, start + c)) for start in range(search.b, arm.depth, c))
    return Layout(prefix, groups, ())


def probe_layers(search: SearchConfig, phase_two: bool) -> int:
    """S1: how many bottom layers the no-grad context probe runs (P-DHT after the switch: one)."""
    return 1 if phase_two else search.b


def kept_to_heads(kept: Tensor) -> list[tuple[int, ...]]:
    """(B, N_h) bool masks of kept heads -> one ascending tuple of head indices per sample."""
    return [tuple(j for j, keep in enumerate(row) if keep) for row in kept.tolist()]  # one copy, not B


# A head set kept by this many samples of a batch or more runs as its own part with one slice of the
# weights; rarer sets run together, head by head. Replaying the kept heads of 40 of saved F-DHT and P-DHT
# runs' test batches (64 samples, 8-12 heads each) through one MiniLM layer, 4 to 16 timed alike (within
# the machine's noise) and 2 about 10% slower.
MIN_SHARED = 4


def run_group(model: DynamicEncoder, h: Tensor, mask: Tensor, layers: tuple[int, ...], kept: Tensor) -> Tensor:
    """Run ``layers`` on h (B, T, E), sample i keeping the heads where kept[i] (B, N_h) is True.

    A head set shared by ``MIN_SHARED`` samples or more runs as one part with a slice of the weights
    (plain matmuls); every other sample runs in one more part, its projections head by head over the
    samples that keep each head (SelfAttention._per_sample_heads), whatever their head counts. Greedy
    Thompson sampling gives most samples a set of their own (about 45 distinct sets in 64 samples), so a
    part per set or per head count made many tiny parts. ``bench/head_group_speed.py`` times a group's
    training step: samples keeping 8, 10 or 12 heads of their own take 1.10-1.16x the all-heads group's
    time for 0.94 of its FLOPs (1.18x with a part per head count). Only attention runs part by part
    (``HeadParts``); residuals, norms and the FFN run once over the whole batch.
    """
    heads = kept_to_heads(kept)
    sets: dict[tuple[int, ...], list[int]] = {}
    for i, hs in enumerate(heads):
        sets.setdefault(hs, []).append(i)
    if len(sets) == 1:
        return model.run_plan(h, mask, ExecutionPlan.uniform(layers, heads[0]))
    shared = [(members, hs) for hs, members in sets.items() if len(members) >= MIN_SHARED]
    rest = sorted(i for members in sets.values() if len(members) < MIN_SHARED for i in members)
    kept = kept.to(h.device)
    if not shared:  # one head-by-head part: rows 0..B-1 in order
        kept_heads: Heads = kept
    else:
        rows = [members for members, _ in shared]
        part_heads: list[Heads] = [hs for _, hs in shared]
        if rest:  # a lone sample is a shared set of one
            rows.append(rest)
            part_heads.append(heads[rest[0]] if len(rest) == 1 else
                              kept.index_select(0, torch.tensor(rest, device=h.device)))
        kept_heads = HeadParts(tuple(torch.tensor(r, device=h.device) for r in rows), tuple(part_heads))
    attn_mask = mask[:, None, None, :]
    for layer in layers:
        h = model.layers[layer](h, attn_mask, kept_heads)
    return h


def sample_plan(layout: Layout, group_heads: list[tuple[int, ...]], num_heads: int) -> ExecutionPlan:
    """The ExecutionPlan one sample followed (for FLOP counting and records)."""
    everything = tuple(range(num_heads))
    layers, heads = list(layout.prefix), [everything] * len(layout.prefix)
    for group, kept in zip(layout.groups, group_heads):
        layers.extend(group)
        heads.extend([kept] * len(group))
    layers.extend(layout.suffix)
    heads.extend([everything] * len(layout.suffix))
    return ExecutionPlan(tuple(layers), tuple(heads))


def sample_plans(search: SearchConfig, arms: list[Arm], kept: list[Tensor],
                 phase_two: bool, num_heads: int) -> tuple[list[list[tuple[int, ...]]], list[ExecutionPlan]]:
    """For samples that ran ``arms`` (one depth) keeping ``kept[o]`` (B, N_h) heads in group o: each
    group's kept heads per sample, and the ExecutionPlan each sample followed (FLOPs and records)."""
    layout = arm_layout(search, arms[0], phase_two)
    per_group = [kept_to_heads(mask) for mask in kept]
    return per_group, [sample_plan(layout, [g[i] for g in per_group], num_heads) for i in range(len(arms))]


def arm_flop_shares(config: EncoderConfig, search: SearchConfig, arms: tuple[Arm, ...], phase_two: bool,
                    tokens: int = 64) -> Tensor:
    """Each arm's forward FLOPs as a share of the full model's, for a sample of ``tokens`` tokens, (A,)
    float64; an arm that leaves H to UCB_H (tree search) is counted with every head."""
    full = full_forward_flops(config, tokens)
    shares = []
    for arm in arms:
        layout = arm_layout(search, arm, phase_two)
        kept = tuple(range(arm.heads or config.num_heads))
        plan = sample_plan(layout, [kept] * len(layout.groups), config.num_heads)
        shares.append(plan_forward_flops(config, plan, tokens) / full)
    return torch.tensor(shares, dtype=torch.float64)
