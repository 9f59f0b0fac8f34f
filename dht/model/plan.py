"""Execution plans: which layers run for a sample, and which heads each of them keeps.

A plan is hashable, so a batch can be partitioned by plan and every group run as one
dense batch (spec §5: samples with the same choice run together).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import Sequence


@dataclass(frozen=True)
class ExecutionPlan:
    """The layers a sample runs, in order, and the heads kept in each of them.

    layers: ascending layer indices; layers not listed are skipped (P-DHT skips the middle).
    heads:  one ascending tuple of kept head indices per entry of ``layers``.
    """

    layers: tuple[int, ...]
    heads: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("an execution plan must run at least one layer")
        if len(self.heads) != len(self.layers):
            raise ValueError(f"plan has {len(self.layers)} layers but {len(self.heads)} head sets")
        if any(b <= a for a, b in zip(self.layers, self.layers[1:])) or self.layers[0] < 0:
            raise ValueError(f"plan layers must be ascending, distinct and >= 0: {self.layers}")
        for layer, kept in zip(self.layers, self.heads):
            if not kept:
                raise ValueError(f"layer {layer} keeps no head")
            if any(b <= a for a, b in zip(kept, kept[1:])) or kept[0] < 0:
                raise ValueError(f"heads of layer {layer} must be ascending, distinct and >= 0: {kept}")

    # --- constructors ------------------------------------------------------------------
    @classmethod
    def full(cls, num_layers: int, num_heads: int) -> "ExecutionPlan":
        """Every layer with every head (the BL1 network)."""
        return cls.first(num_layers, num_heads)

    @classmethod
    def first(cls, depth: int, num_heads: int, heads: Sequence[int] | None = None) -> "ExecutionPlan":
        """The first ``depth`` layers, each keeping ``heads`` (all heads when None)."""
        kept = tuple(range(num_heads)) if heads is None else heads
        return cls.uniform(tuple(range(depth)), kept)

    @classmethod
    def uniform(cls, layers: Sequence[int], heads: Sequence[int]) -> "ExecutionPlan":
        """``layers``, every one keeping the same ``heads`` (a head group, or all heads)."""
        return cls(tuple(layers), (tuple(sorted(heads)),) * len(layers))

    @classmethod
    def from_groups(cls, layers: Sequence[int], group_heads: Sequence[Sequence[int]],
                    group_size: int) -> "ExecutionPlan":
        """Layers in groups of ``group_size``, one head set per group (spec §2)."""
        if len(layers) != len(group_heads) * group_size:
            raise ValueError(f"{len(layers)} layers do not split into {len(group_heads)} groups of {group_size}")
        heads = tuple(tuple(sorted(group_heads[i // group_size])) for i in range(len(layers)))
        return cls(tuple(layers), heads)

    @classmethod
    def skip_middle(cls, bottom: int, top: int, num_layers: int, num_heads: int,
                    bottom_heads: Sequence[int] | None = None) -> "ExecutionPlan":
        """P-DHT: the bottom ``bottom`` layers with ``bottom_heads``, then the top ``top`` layers
        with all heads, skipping the layers between them (spec §2)."""
        if bottom < 0 or top < 1 or bottom + top > num_layers:
            raise ValueError(f"cannot run bottom {bottom} + top {top} of {num_layers} layers")
        kept = tuple(range(num_heads)) if bottom_heads is None else tuple(sorted(bottom_heads))
        everything = tuple(range(num_heads))
        layers = tuple(range(bottom)) + tuple(range(num_layers - top, num_layers))
        return cls(layers, (kept,) * bottom + (everything,) * top)

    # --- queries -----------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Number of layers that run."""
        return len(self.layers)

    @property
    def shape(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The layers and the head count of each: plans of one shape run as one dense batch."""
        return self.layers, tuple(len(kept) for kept in self.heads)

    def split(self, n: int) -> tuple["ExecutionPlan | None", "ExecutionPlan | None"]:
        """Split after the first ``n`` executed layers (e.g. the S1 probe and the rest)."""
        head = ExecutionPlan(self.layers[:n], self.heads[:n]) if n > 0 else None
        rest = ExecutionPlan(self.layers[n:], self.heads[n:]) if n < self.depth else None
        return head, rest

    def check(self, num_layers: int, num_heads: int) -> None:
        """Raise ValueError if the plan does not fit a model of this shape."""
        if self.layers[-1] >= num_layers:
            raise ValueError(f"plan runs layer {self.layers[-1]} but the model has {num_layers} layers")
        for layer, kept in zip(self.layers, self.heads):
            if kept[-1] >= num_heads:
                raise ValueError(f"plan keeps head {kept[-1]} in layer {layer} but layers have {num_heads} heads")

    def describe(self) -> str:
        """Short human-readable label, e.g. '4L12H' or '2L8H+2L12H' (runs of equal head counts)."""
        runs = [(len(list(group)), count) for count, group in groupby(len(kept) for kept in self.heads)]
        return "+".join(f"{n}L{count}H" for n, count in runs)
