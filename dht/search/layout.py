"""Where an arm's layers run and how a group of layers runs with per-sample heads.

Dimension legend: B batch, T tokens, E hidden, N_h heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dht.model import DynamicEncoder, ExecutionPlan
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
    return [tuple(torch.nonzero(row).flatten().tolist()) for row in kept]


def run_group(model: DynamicEncoder, h: Tensor, mask: Tensor, layers: tuple[int, ...], kept: Tensor) -> Tensor:
    """Run ``layers`` on h (B, T, E), sample i keeping the heads where kept[i] (B, N_h) is True.

    Samples with the same number of kept heads run together (their own heads gathered per
    sample), so a batch splits into at most one part per head count.
    """
    counts = kept.sum(1)
    out = torch.empty_like(h) if len(counts.unique()) > 1 else None
    for count in counts.unique().tolist():
        rows = torch.nonzero(counts == count).flatten()
        heads = kept_to_heads(kept[rows])
        plans = [ExecutionPlan(layers, (hs,) * len(layers)) for hs in heads]
        part = h if out is None else h.index_select(0, rows)
        part_mask = mask if out is None else mask.index_select(0, rows)
        result = model.run_plan(part, part_mask, plans)
        if out is None:
            return result
        out[rows] = result
    return out


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
