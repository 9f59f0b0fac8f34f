"""The selection block's order and window defaults (dht/search/records.py), and the pooling spec of
dht.search.features.pool (§7.1), against hand-computed values."""

import torch

from dht.bandits import multiscale_pool
from dht.search.features import HEAD_DIM, HEAD_POOL, pool
from dht.search.records import shares, windows


def record(step, depth):
    return {"epoch": 0, "step": step, "depth": depth, "heads": [], "arm": f"{depth}L"}


def test_shares_list_their_values_in_text_order():
    """metrics.json keeps the dict's order: values come sorted by their text ("12" before "3"), not by
    value, by first appearance or by count. 3 once and 12 twice: {"12": 2/3, "3": 1/3} in that order."""
    assert list(shares([3, 12, 12]).items()) == [("12", 0.6667), ("3", 0.3333)]


def test_windows_span_ten_steps_by_default():
    """With the defaults a window spans at least min_steps = 10 steps: 20 steps give two windows, ending
    at steps 9 and 19. Depth 2 in the first ten steps and 4 in the last ten gives shares 1, 0 and 0, 1."""
    records = [record(s, 2 if s < 10 else 4) for s in range(20)]
    xs, series = windows(records, lambda r: r["depth"])
    assert xs == [9, 19] and series == {2: [1.0, 0.0], 4: [0.0, 1.0]}


def test_windows_are_at_most_thirty_by_default():
    """400 steps would allow 40 windows of 10 steps; the default max_windows = 30 caps them, each window
    ending at step ⌊(i + 1)·400 / 30⌋ − 1: 12, 25, ..., 399."""
    records = [record(s, 2) for s in range(400)]
    xs, series = windows(records, lambda r: r["depth"])
    assert xs == [(i + 1) * 400 // 30 - 1 for i in range(30)]
    assert xs[0] == 12 and xs[-1] == 399 and series == {2: [1.0] * 30}


def test_pool_uses_the_specs_sequence_splits():
    """pool(h, mask, (seq_splits, emb_splits)) is multiscale_pool with both splits of the spec: TSB's
    HEAD_POOL = ((1,), (4, 8)) gives (1)·(4 + 8) = 12 = HEAD_DIM features, float64 on the CPU."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 6, 16, generator=gen)
    mask = torch.arange(6)[None] < torch.tensor([6, 4, 1])[:, None]
    out = pool(h, mask, HEAD_POOL)
    assert out.shape == (3, HEAD_DIM) and out.dtype == torch.float64 and out.device.type == "cpu"
    assert torch.equal(out, multiscale_pool(h, mask, seq_splits=(1,), emb_splits=(4, 8)))
