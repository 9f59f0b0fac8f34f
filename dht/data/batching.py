"""Pad token ids into batches, each to its own longest sample.

Dimension letters: B = samples in the batch, T = longest sample in the batch (tokens).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """A padded batch and where its samples sit in the split."""

    input_ids: Tensor  # (B, T) long, padded with pad_id
    attention_mask: Tensor  # (B, T) bool, True = real token
    labels: Tensor  # (B,) long, 0-based class indices
    index: Tensor  # (B,) long, position of each sample in the split

    def __post_init__(self):
        if self.input_ids.dim() != 2 or self.attention_mask.shape != self.input_ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must share a (B, T) shape, got "
                f"{tuple(self.input_ids.shape)} and {tuple(self.attention_mask.shape)}"
            )
        size = (self.input_ids.shape[0],)
        if self.labels.shape != size or self.index.shape != size:
            raise ValueError(f"labels and index must have shape {size}")

    def __len__(self) -> int:
        """Return the number of samples B."""
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        """Return the batch with its four tensors on device (a subclass keeps its own fields as they are)."""
        return dataclasses.replace(self, input_ids=self.input_ids.to(device),
                                   attention_mask=self.attention_mask.to(device),
                                   labels=self.labels.to(device), index=self.index.to(device))

    def rows(self, rows: Sequence[int]) -> Batch:
        """A plain Batch of the samples at ``rows`` (in that order), padded only to the longest of them."""
        index = torch.tensor(rows, dtype=torch.long, device=self.input_ids.device)
        mask = self.attention_mask.index_select(0, index)
        T = int(mask.sum(1).max())
        return Batch(self.input_ids.index_select(0, index)[:, :T], mask[:, :T], self.labels.index_select(0, index),
                     self.index.index_select(0, index))


def collate(ids: Sequence[Sequence[int]], labels: Sequence[int], index: Sequence[int], pad_id: int) -> Batch:
    """Pad the samples' token ids with pad_id to the longest one and stack them into a Batch."""
    if not len(ids):
        raise ValueError("cannot collate an empty batch")
    if not len(ids) == len(labels) == len(index):
        raise ValueError(f"got {len(ids)} samples, {len(labels)} labels and {len(index)} indices")
    if type(pad_id) is not int:
        raise ValueError(f"pad_id must be an int, got {pad_id!r}")
    lengths = [len(seq) for seq in ids]
    if min(lengths) == 0:
        raise ValueError("every sample needs at least one token")
    longest = max(lengths)
    input_ids = torch.tensor([list(seq) + [pad_id] * (longest - len(seq)) for seq in ids], dtype=torch.long)
    # (1, T) < (B, 1) -> (B, T)
    attention_mask = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=torch.tensor(list(labels), dtype=torch.long),
        index=torch.tensor(list(index), dtype=torch.long),
    )


def iterate_batches(
    ids: Sequence[Sequence[int]],
    labels: Sequence[int],
    batch_size: int,
    pad_id: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    sort_by_length: bool = False,
    start_batch: int = 0,
) -> Iterator[Batch]:
    """Yield padded batches covering every sample once; the last partial batch is kept.

    shuffle draws the order from generator (same generator state, same order).
    sort_by_length orders samples by length so each batch carries little padding (for
    inference; Batch.index restores the original order). Both together give a bucketed
    shuffle for training: batches of similar lengths, visited in random order (see
    bucketed_order). start_batch skips that many
    batches of the same order, to resume mid-epoch: pass a generator in the state it had
    at the start of the epoch.
    """
    if len(ids) != len(labels):
        raise ValueError(f"got {len(ids)} samples but {len(labels)} labels")
    if type(batch_size) is not int or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if shuffle and generator is None:
        raise ValueError("shuffle needs an explicit torch.Generator")
    num_batches = -(-len(ids) // batch_size)
    if type(start_batch) is not int or not 0 <= start_batch <= num_batches:
        raise ValueError(f"start_batch must be an int in 0..{num_batches}, got {start_batch!r}")
    if shuffle and sort_by_length:
        order = bucketed_order(ids, batch_size, generator)
    else:
        order = batch_order(ids, shuffle, generator, sort_by_length)
    return _batches(ids, labels, order, batch_size, pad_id, start_batch)


def batch_order(
    ids: Sequence[Sequence[int]], shuffle: bool, generator: torch.Generator | None, sort_by_length: bool
) -> list[int]:
    """Return the order in which samples are visited: shuffled, sorted by length, or as given."""
    if shuffle:
        return torch.randperm(len(ids), generator=generator).tolist()
    if sort_by_length:
        return sorted(range(len(ids)), key=lambda i: len(ids[i]))  # stable: ties keep split order
    return list(range(len(ids)))


def bucketed_order(ids: Sequence[Sequence[int]], batch_size: int, generator: torch.Generator,
                   window: int = 50) -> list[int]:
    """Return a training order whose consecutive batches hold samples of similar length.

    Shuffle, sort each window of ``window`` batches by length, cut it into batches, then shuffle
    the batches; the one partial batch stays last so consecutive slices remain whole batches.
    Padding drops several-fold against a plain shuffle while every epoch still differs.
    """
    order = torch.randperm(len(ids), generator=generator).tolist()
    span = window * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: len(ids[i]))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    partial = [b for b in batches if len(b) < batch_size]
    full = [b for b in batches if len(b) == batch_size]
    shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    return [i for batch in shuffled + partial for i in batch]


def _batches(
    ids: Sequence[Sequence[int]],
    labels: Sequence[int],
    order: list[int],
    batch_size: int,
    pad_id: int,
    start_batch: int,
) -> Iterator[Batch]:
    """Collate consecutive slices of order, starting at batch start_batch."""
    for start in range(start_batch * batch_size, len(order), batch_size):
        chunk = order[start : start + batch_size]
        yield collate([ids[i] for i in chunk], [labels[i] for i in chunk], chunk, pad_id)
