"""Shape buckets and per-layer graph replay of the folded layers (transformer_inverse.md §11).

On a CPU the graphs are replayed by calling the captured work again on the same static buffers
(``rerun_capture``): what a CUDA graph does, so the buffers' bookkeeping (loading, padding, compaction,
bucket changes) is checked here against the eager layers. Where torch sees a GPU the same tests capture
real CUDA graphs (``bench/gpu/checks.sh`` runs them on a lent GPU).
"""

import pytest
import torch
from conftest import tiny_config

from dht.model import DynamicEncoder
from dht.model.folding import FoldedStack
from dht.model.graphs import LayerGraphs, bucket, cuda_graph_capture, rerun_capture


def eager_exit(model, folded, h, mask, layer, width):
    h = folded.body(h, mask[:, None, None, :], layer, width)
    pooled = model.pool(h, mask)
    return h, pooled, model.classifier(pooled)


@pytest.fixture(params=["cpu", "cuda"])
def on(request, float32_products):
    """(capture, device, tolerance): the CPU's replay by calling again, or CUDA graphs where torch sees a GPU
    (float32 products, no TF32; kernels chosen per padded shape differ in the last bits)."""
    if request.param == "cpu":
        return rerun_capture, "cpu", 1e-5
    if not torch.cuda.is_available():
        pytest.skip("CUDA graphs need a GPU")
    float32_products()
    return cuda_graph_capture("cuda"), "cuda", 1e-4


def graphs_for(model, folded, capture=rerun_capture, device="cpu", **buckets):
    config = model.config
    return LayerGraphs(folded, model.pool, model.classifier, (config.num_heads, 2), config.hidden_size,
                       config.num_classes, device, capture, **buckets)


def test_bucket_is_the_smallest_that_holds_and_the_size_beyond_the_largest():
    assert [bucket(n, (1, 2, 4)) for n in (1, 2, 3, 4, 9)] == [1, 2, 4, 4, 9]


def test_one_replay_per_layer_width_and_bucket_captured_once():
    torch.manual_seed(0)
    model = DynamicEncoder(tiny_config()).eval()
    captured = []

    def counting(fn):
        captured.append(fn)
        return fn

    graphs = graphs_for(model, FoldedStack(model), counting, batch_buckets=(1, 2, 4), length_buckets=(8, 16))
    L = model.config.num_layers
    assert len(captured) == len(graphs.replays) == L * 2 * 3 * 2
    assert set(graphs.buffers) == {(B, T) for B in (1, 2, 4) for T in (8, 16)}


@pytest.mark.parametrize("width", [4, 2])
def test_replays_with_compaction_equal_the_eager_layers(width, on):
    """Layer by layer, halting two samples after layer 1 and the longest after layer 2: the replayed exits
    equal the eager ones on the samples still running, across changes of bucket in both dimensions."""
    capture, device, tol = on
    torch.manual_seed(0)
    model = DynamicEncoder(tiny_config()).eval().to(device)
    folded = FoldedStack(model, [torch.randperm(4).tolist() for _ in range(model.config.num_layers)])
    graphs = graphs_for(model, folded, capture, device, batch_buckets=(1, 2, 4, 8), length_buckets=(4, 8, 12))
    ids = torch.randint(1, 100, (5, 11), generator=torch.Generator().manual_seed(1)).to(device)
    mask = torch.ones(5, 11, dtype=torch.bool, device=device)
    mask[1, 3:] = mask[2, 7:] = mask[4, 5:] = False
    halts = {0: torch.tensor([False, False, True, True, False], device=device),
             1: torch.tensor([True, False, False], device=device)}
    with torch.no_grad():
        h = model.embed(ids)
        graphs.load(h, mask)
        assert graphs.shape == (8, 12)
        for layer in range(3):
            pooled, logits = graphs.layer(layer, width)
            h, eager_pooled, eager_logits = eager_exit(model, folded, h, mask, layer, width)
            assert torch.allclose(pooled, eager_pooled, atol=tol) and torch.allclose(logits, eager_logits, atol=tol)
            states = graphs.buffers[graphs.shape].h[: graphs.rows, : graphs.tokens]
            assert torch.allclose(states, h, atol=tol)
            if layer in halts:
                keep = ~halts[layer]
                graphs.keep(keep)
                h, mask = h[keep], mask[keep]
                longest = int(mask.sum(1).max())
                h, mask = h[:, :longest], mask[:, :longest]
        # 5 rows -> rows 0, 1, 4 (lengths 11, 3, 5) -> rows 1 and 4: (8, 12) -> (4, 12) -> (2, 8)
        assert graphs.shape == (2, 8) and (graphs.rows, graphs.tokens) == (2, 5)


def test_a_reload_leaves_nothing_of_the_previous_samples(on):
    """A short batch after a long one in the same bucket: padding left over from the first would change the
    second's exits if load did not clear the buffers' rows, tokens and mask. Padded rows stay finite."""
    capture, device, tol = on
    torch.manual_seed(0)
    model = DynamicEncoder(tiny_config()).eval().to(device)
    folded = FoldedStack(model)
    graphs = graphs_for(model, folded, capture, device, batch_buckets=(4,), length_buckets=(8,))
    with torch.no_grad():
        long = torch.randn(4, 8, 32, device=device)
        graphs.load(long, torch.ones(4, 8, dtype=torch.bool, device=device))
        graphs.layer(0, 4)
        short, short_mask = torch.randn(2, 5, 32, device=device), torch.ones(2, 5, dtype=torch.bool, device=device)
        short_mask[1, 3:] = False
        graphs.load(short, short_mask)
        pooled, logits = graphs.layer(0, 4)
        _, eager_pooled, eager_logits = eager_exit(model, folded, short, short_mask, 0, 4)
    assert torch.allclose(pooled, eager_pooled, atol=tol) and torch.allclose(logits, eager_logits, atol=tol)
    assert pooled.shape == (2, 32)
    buffers = graphs.buffers[4, 8]
    assert torch.isfinite(buffers.h).all() and torch.isfinite(buffers.logits).all()  # padded rows included


def test_samples_beyond_the_largest_bucket_are_refused():
    torch.manual_seed(0)
    model = DynamicEncoder(tiny_config()).eval()
    graphs = graphs_for(model, FoldedStack(model), batch_buckets=(1, 2), length_buckets=(8,))
    with pytest.raises(ValueError, match="3 samples of 4 tokens exceed the largest shape bucket"):
        graphs.load(torch.zeros(3, 4, 32), torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="exceed"):
        graphs.load(torch.zeros(1, 9, 32), torch.ones(1, 9, dtype=torch.bool))
