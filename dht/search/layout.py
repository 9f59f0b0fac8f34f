"""Where an arm's layers run and how a group of layers runs with per-sample heads.

Dimension legend: B batch, T tokens, E hidden, N_h heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dht.model import DynamicEncoder, ExecutionPlan
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


def run_group(model: DynamicEncoder, h: Tensor, mask: Tensor, layers: tuple[int, ...], kept: Tensor) -> Tensor:
    """Run ``layers`` on h (B, T, E), sample i keeping the heads where kept[i] (B, N_h) is True.

    Samples that keep the same heads run together with one slice of the weights (plain matmuls); the
    samples whose head set is theirs alone run together per head count, their projections head by
    head (SelfAttention._per_sample_heads), which costs about 1.4x a slice per FLOP at these sizes,
    so every set shared by two or more samples (about three per set at greedy inference) saves work.
    Only attention runs part by part (``HeadParts``); residuals, norms and the FFN run once over the
    whole batch. For a training step of MiniLM's layers 2-3 on 32 x 50 tokens with 8, 10 or 12 heads per
    sample, this takes 1.07x the all-heads group's time for 0.94 of its FLOPs, against 1.27x when each
    part ran its own FFN.
    """
    heads = kept_to_heads(kept)
    sets: dict[tuple[int, ...], list[int]] = {}
    for i, hs in enumerate(heads):
        sets.setdefault(hs, []).append(i)
    if len(sets) == 1:
        return model.run_plan(h, mask, ExecutionPlan.uniform(layers, heads[0]))
    rows: list[list[int]] = []
    part_heads: list[Heads] = []
    alone: dict[int, list[int]] = {}  # head count -> samples whose set nobody else keeps
    for hs, members in sets.items():
        if len(members) > 1:
            rows.append(members)
            part_heads.append(hs)
        else:
            alone.setdefault(len(hs), []).extend(members)
    for members in alone.values():  # (n, k) heads per sample; a lone sample is a shared set of one
        rows.append(members)
        part_heads.append(torch.tensor([heads[i] for i in members], device=h.device) if len(members) > 1
                          else heads[members[0]])
    if len(rows) == 1:  # every sample alone, one head count: rows are 0..B-1 in order
        kept_heads: Heads = part_heads[0]
    else:  # attention part by part, then the FFN (two thirds of a layer's work) once for the batch
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
