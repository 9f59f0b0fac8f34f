"""Arm features z: one no-grad pass of a sample of training texts before each epoch (spec §3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dht.data import iterate_batches
from dht.flops import layer_forward_flops
from dht.model import DynamicEncoder, ExecutionPlan
from dht.search.arms import Arm, SearchConfig
from dht.search.features import (
    HEAD_COUNT_DIM,
    HEAD_COUNT_POOL,
    HEAD_DIM,
    TOP_DIM,
    TOP_POOL,
    head_contexts,
    pool,
    standardise,
)
from dht.search.layout import Layout, arm_layout, run_group


@dataclass
class ArmFeatures:
    """Standardised arm features of every bandit, and the FLOPs it took to compute them."""

    top: Tensor  # (n_arms, TOP_DIM): UCB_L / UCB_cp
    head_count: Tensor  # (n_head_options, HEAD_COUNT_DIM): UCB_H
    head: Tensor  # (N_h, HEAD_DIM): TSB
    flops: float


def random_kept(batch: int, num_heads: int, keep: int, generator: torch.Generator) -> Tensor:
    """(B, N_h) bool: ``keep`` heads drawn uniformly for each sample."""
    scores = torch.rand(batch, num_heads, generator=generator)
    kept = torch.zeros(batch, num_heads, dtype=torch.bool)
    return kept.scatter_(1, scores.topk(keep, dim=1).indices, True)


def head_counts(search: SearchConfig, arms: tuple[Arm, ...]) -> tuple[int, ...]:
    """The head counts a feature pass draws from: every arm's H, and UCB_H's options where some arm
    leaves H to UCB_H (tree search)."""
    counts = {arm.heads for arm in arms if arm.heads is not None}
    if search.mode == "tree" or any(arm.heads is None for arm in arms):
        counts |= set(search.head_options)
    return tuple(sorted(counts))


def feature_passes(search: SearchConfig, arms: tuple[Arm, ...], H: int) -> list[tuple[Arm, int | None]]:
    """The (arm, index in ``arms``) passes run by the samples drawn to keep H heads: the arms with H
    heads or with H left open (tree), and in tree search a full-depth pass (index None) so that UCB_H
    gets a feature for H in every group."""
    passes: list[tuple[Arm, int | None]] = [(arm, i) for i, arm in enumerate(arms) if arm.heads in (H, None)]
    if search.mode == "tree":
        passes.append((Arm(search.num_layers, H), None))
    return passes


def arm_steps(layout: Layout, H: int, N_h: int) -> list[tuple[tuple[int, ...], int, bool]]:
    """An arm's pass as (layers, heads kept, is a head-decision group) steps: the all-heads prefix,
    the H-head groups, the all-heads suffix."""
    steps = [(layout.prefix, N_h, False)] if layout.prefix else []
    steps += [(group, H, True) for group in layout.groups]
    return steps + ([(layout.suffix, N_h, False)] if layout.suffix else [])


@torch.no_grad()
def compute_arm_features(model: DynamicEncoder, search: SearchConfig, arms: tuple[Arm, ...], phase_two: bool,
                         ids: list[list[int]], pad_id: int, generator: torch.Generator,
                         batch_size: int = 64) -> ArmFeatures:
    """§3: one no-grad pass of ``ids`` under random H-head masks; each arm's z averages the pools
    after its own layers.

    "One pass" as the spec says: sample i keeps H = counts[i mod n] heads (``head_counts``: balanced,
    and random because ``ids`` is a random draw), runs its layers once, and serves every arm with
    that H (or with H left to UCB_H); a deeper arm continues from the shallower one's states. So an
    (L, H) feature averages the samples that kept H heads, and the cost is one pass of the model
    (F-DHT on 6 layers: 6 layer passes per sample, against 30 for one pass per arm)."""
    was_training = model.training
    model.eval()
    N_h, counts = model.config.num_heads, head_counts(search, arms)
    top_sum = torch.zeros(len(arms), TOP_DIM, dtype=torch.float64)
    top_n = torch.zeros(len(arms), dtype=torch.float64)
    count_sum = {H: torch.zeros(HEAD_COUNT_DIM, dtype=torch.float64) for H in search.head_options}
    count_n = {H: 0 for H in search.head_options}
    head_sum = torch.zeros(N_h, HEAD_DIM, dtype=torch.float64)
    head_n, flops = 0, 0.0
    device = next(model.parameters()).device
    for batch in iterate_batches(ids, [0] * len(ids), batch_size, pad_id, shuffle=False, sort_by_length=True):
        batch = batch.to(device)
        slots = torch.tensor([counts[i % len(counts)] for i in batch.index.tolist()])
        for H in counts:
            rows = torch.nonzero(slots == H).flatten().to(device)
            if not len(rows):
                continue
            mask = batch.attention_mask[rows]
            lengths = mask.sum(1).tolist()
            embedded = model.embed(batch.input_ids[rows])
            done: dict[tuple, Tensor] = {}  # the steps run so far -> hidden states after them
            for arm, index in feature_passes(search, arms, H):
                h, key = embedded, ()
                for layers, kept, is_group in arm_steps(arm_layout(search, arm, phase_two), H, N_h):
                    key += ((layers, kept, is_group),)
                    if key in done:
                        h = done[key]
                        continue
                    if not is_group:
                        h = model.run_plan(h, mask, ExecutionPlan.uniform(layers, range(N_h)))
                    else:
                        h = run_group(model, h, mask, layers, random_kept(len(rows), N_h, kept, generator))
                        if kept in count_sum:  # arms may keep a head count that is no UCB_H option
                            count_sum[kept] += pool(h, mask, HEAD_COUNT_POOL).sum(0)
                            count_n[kept] += len(rows)
                    done[key] = h
                    flops += len(layers) * sum(layer_forward_flops(model.config, t, kept) for t in lengths)
                if index is not None:
                    top_sum[index] += pool(h, mask, TOP_POOL).sum(0)
                    top_n[index] += len(rows)
                head_sum += head_contexts(h, mask, N_h).sum(0)
                head_n += len(rows)
    model.train(was_training)
    head_count = torch.stack([count_sum[H] / max(count_n[H], 1) for H in search.head_options])
    return ArmFeatures(standardise(top_sum / top_n.clamp(min=1).unsqueeze(1)), standardise(head_count),
                       standardise(head_sum / max(head_n, 1)), flops)
