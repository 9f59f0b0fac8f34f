"""Queues that turn per-sample depth choices into dense training batches (spec §5; Algorithm 3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Hashable, Iterator, TypeVar

Item = TypeVar("Item")


@dataclass
class DepthQueues(Generic[Item]):
    """One queue per key (a depth L); a queue that reaches ``size`` items is released as a batch."""

    size: int  # q: the training batch size
    queues: dict[Hashable, list[Item]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"queue size must be >= 1, got {self.size}")

    def push(self, key: Hashable, item: Item) -> list[Item] | None:
        """Alg. 3 lines 2-5: add an item to its queue; return the whole queue once it holds ``size``."""
        queue = self.queues.setdefault(key, [])
        queue.append(item)
        if len(queue) < self.size:
            return None
        self.queues[key] = []
        return queue

    def flush(self) -> Iterator[tuple[Hashable, list[Item]]]:
        """Release every partial queue (end of an epoch), in the text order of the keys' repr (fixed for keys
        of any type; for integer depths 12 comes before 3), and empty them."""
        for key in sorted(self.queues, key=repr):
            if self.queues[key]:
                yield key, self.queues[key]
        self.queues = {}

    def __len__(self) -> int:
        return sum(len(queue) for queue in self.queues.values())


def length_chunks(lengths: list[int], min_size: int = 8, min_saving: float = 0.1) -> list[list[int]]:
    """How a released batch is computed: its rows (indices into ``lengths``), shortest first, in one chunk
    or in two split where the fewest padding tokens remain, each at least ``min_size`` rows.

    A queue gathers samples from several loader batches, so a released batch mixes lengths (in an F-DHT
    run on AG News, 31% of its tokens were padding, against 2% in BL1's length-bucketed batches). Two
    chunks keep the batch's samples, optimizer step and bandit update; they only stop short samples
    being padded to the longest. The split is taken when it saves at least ``min_saving`` of the
    padded tokens, since each chunk's products run on fewer rows.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ranked = [lengths[i] for i in order]
    B = len(ranked)
    whole = B * ranked[-1] if B else 0
    best, cut = whole, None
    for s in range(min_size, B - min_size + 1):
        padded = s * ranked[s - 1] + (B - s) * ranked[-1]
        if padded < best:
            best, cut = padded, s
    if cut is None or best > (1 - min_saving) * whole:
        return [order]
    return [order[:cut], order[cut:]]
