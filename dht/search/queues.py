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
        """Release every partial queue (end of an epoch), in key order, and empty them."""
        for key in sorted(self.queues, key=repr):
            if self.queues[key]:
                yield key, self.queues[key]
        self.queues = {}

    def __len__(self) -> int:
        return sum(len(queue) for queue in self.queues.values())
