"""run_group: per-sample heads give the same states whichever way the samples are grouped."""

import pytest
import torch
from conftest import random_batch

from dht.model import ExecutionPlan
from dht.model.encoder import kept_mask
from dht.search.layout import MIN_SHARED, run_group


@pytest.mark.parametrize("sets", [
    [(0, 1)] * MIN_SHARED + [(1, 2), (0, 1, 3), (1, 2)],  # a shared set (one slice); the rest head by head
    [(0, 1)] * MIN_SHARED + [(2, 3)],  # a shared set and a set of its own (a slice of one sample)
    [(0, 1), (1, 2), (2, 3), (0, 3), (0, 1, 2), (3,)],  # no shared set: one head-by-head part, mixed counts
])
def test_run_group_matches_each_sample_alone(tiny_model, sets):
    ids, mask = random_batch(batch=len(sets))
    with torch.no_grad():
        h = tiny_model.embed(ids)
        out = run_group(tiny_model, h, mask, (1, 2), kept_mask(sets, num_heads=4))
        for i, heads in enumerate(sets):
            alone = tiny_model.run_plan(h[i:i + 1], mask[i:i + 1], ExecutionPlan((1, 2), (heads, heads)))
            assert torch.allclose(out[i:i + 1], alone, atol=1e-5), f"sample {i}"
