"""Tests for dht.data.batching: per-batch padding and batch orders."""

import pytest
import torch

from dht.data import Batch, collate, iterate_batches

PAD = 0


def samples(n: int = 23, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """Return n token-id lists of random lengths 2..20 and their labels."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 21, (n,), generator=g).tolist()
    ids = [[101] + [1000 + i] * (length - 2) + [102] for i, length in enumerate(lengths)]
    return ids, [i % 4 for i in range(n)]


def order_of(batches) -> list[int]:
    return [i for b in batches for i in b.index.tolist()]


def test_collate_pads_to_the_longest_sample():
    batch = collate([[101, 7, 102], [101, 102], [101, 5, 6, 102]], [2, 0, 1], [4, 9, 1], pad_id=PAD)
    assert batch.input_ids.tolist() == [[101, 7, 102, PAD], [101, 102, PAD, PAD], [101, 5, 6, 102]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch.attention_mask.dtype == torch.bool
    assert batch.input_ids.dtype == batch.labels.dtype == batch.index.dtype == torch.long
    assert batch.labels.tolist() == [2, 0, 1] and batch.index.tolist() == [4, 9, 1]
    assert len(batch) == 3


def test_collate_uses_the_given_pad_id():
    batch = collate([[1], [1, 2, 3]], [0, 0], [0, 1], pad_id=-7)
    assert batch.input_ids[0].tolist() == [1, -7, -7]
    assert batch.attention_mask[0].tolist() == [True, False, False]


@pytest.mark.parametrize(
    "ids, labels, index, pad_id",
    [
        ([], [], [], PAD),  # empty batch
        ([[1]], [0, 1], [0], PAD),  # lengths differ
        ([[1]], [0], [0, 1], PAD),
        ([[1], []], [0, 0], [0, 1], PAD),  # empty sample
        ([[1]], [0], [0], 0.5),  # pad_id not an int
    ],
)
def test_collate_rejects_bad_input(ids, labels, index, pad_id):
    with pytest.raises(ValueError):
        collate(ids, labels, index, pad_id)


def test_batch_validates_shapes_and_moves():
    ok = collate([[1, 2]], [0], [0], PAD)
    assert ok.to("cpu").input_ids.tolist() == [[1, 2]]
    with pytest.raises(ValueError):
        Batch(ok.input_ids, ok.attention_mask[:, :1], ok.labels, ok.index)
    with pytest.raises(ValueError):
        Batch(ok.input_ids, ok.attention_mask, torch.zeros(2, dtype=torch.long), ok.index)


def test_rows_keeps_the_order_given_and_trims_padding():
    batch = collate([[101, 7, 8, 9, 102], [101, 102], [101, 5, 102]], [2, 0, 1], [4, 9, 1], pad_id=PAD)
    part = batch.rows([2, 1])
    assert part.input_ids.tolist() == [[101, 5, 102], [101, 102, PAD]]  # padded to its own longest, 3
    assert part.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert part.labels.tolist() == [1, 0] and part.index.tolist() == [1, 9]


@pytest.mark.parametrize("shuffle, sort_by_length", [(False, False), (True, False), (False, True), (True, True)])
def test_every_index_exactly_once_and_last_partial_batch_kept(shuffle, sort_by_length):
    ids, labels = samples(23)
    g = torch.Generator().manual_seed(0)
    batches = list(
        iterate_batches(ids, labels, 5, PAD, shuffle=shuffle, generator=g, sort_by_length=sort_by_length)
    )
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(order_of(batches)) == list(range(23))
    for b in batches:  # labels and tokens travel with their index
        assert b.labels.tolist() == [labels[i] for i in b.index.tolist()]
        lengths = b.attention_mask.sum(1).tolist()
        assert lengths == [len(ids[i]) for i in b.index.tolist()]
        assert b.input_ids.shape[1] == max(lengths)


def test_unshuffled_order_is_the_split_order():
    ids, labels = samples(7)
    assert order_of(iterate_batches(ids, labels, 3, PAD, shuffle=False)) == list(range(7))


def test_shuffle_is_deterministic_per_seed():
    ids, labels = samples(40)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return order_of(iterate_batches(ids, labels, 8, PAD, shuffle=True, generator=g))

    assert run(3) == run(3)
    assert run(3) != run(4)
    assert run(3) != list(range(40))


def test_sort_by_length_reduces_padding():
    ids, labels = samples(60)
    plain = list(iterate_batches(ids, labels, 8, PAD, shuffle=False))
    by_length = list(iterate_batches(ids, labels, 8, PAD, shuffle=False, sort_by_length=True))
    widths = [b.input_ids.shape[1] for b in by_length]
    assert widths == sorted(widths)
    padding = lambda batches: sum(int((~b.attention_mask).sum()) for b in batches)  # noqa: E731
    assert padding(by_length) < padding(plain)


def test_bucketed_shuffle_reduces_padding_and_keeps_randomness():
    ids, labels = samples(200)
    def run(seed, sort):
        g = torch.Generator().manual_seed(seed)
        return list(iterate_batches(ids, labels, 8, PAD, shuffle=True, generator=g, sort_by_length=sort))
    padding = lambda batches: sum(int((~b.attention_mask).sum()) for b in batches)  # noqa: E731
    assert padding(run(0, True)) < padding(run(0, False)) / 2
    assert [b.index.tolist() for b in run(0, True)] != [b.index.tolist() for b in run(1, True)]
    assert [b.index.tolist() for b in run(0, True)] == [b.index.tolist() for b in run(0, True)]


def test_start_batch_resumes_the_same_order():
    ids, labels = samples(23)
    def run(start_batch):
        g = torch.Generator().manual_seed(9)
        return list(iterate_batches(ids, labels, 4, PAD, shuffle=True, generator=g, start_batch=start_batch))

    full, resumed = run(0), run(2)
    assert len(resumed) == len(full) - 2
    for a, b in zip(full[2:], resumed):
        assert torch.equal(a.index, b.index) and torch.equal(a.input_ids, b.input_ids)
    assert list(iterate_batches(ids, labels, 4, PAD, shuffle=False, start_batch=6)) == []


def test_empty_split_yields_nothing():
    assert list(iterate_batches([], [], 4, PAD, shuffle=False)) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(batch_size=0),
        dict(batch_size=2.0),
        dict(shuffle=True, generator=None),  # randomness must be explicit
        dict(start_batch=-1),
        dict(start_batch=4),  # 3 batches of 2 in 5 samples
        dict(labels=[0, 1]),
    ],
)
def test_iterate_batches_rejects_bad_arguments(kwargs):
    ids, labels = samples(5)
    args = dict(ids=ids, labels=labels, batch_size=2, pad_id=PAD, shuffle=False, generator=torch.Generator())
    args |= kwargs
    with pytest.raises(ValueError):
        iterate_batches(**args)  # raises at the call, before iteration
