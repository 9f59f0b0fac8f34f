"""Tests of dht.bandits.context: multiscale pooling (§7.1) and the running normaliser (§7.2)."""

import numpy as np
import pytest
import torch

from dht.bandits import RunningNormalizer, multiscale_pool, pooled_dim

F64 = torch.float64


def _reference_pool(h, mask, seq_splits, emb_splits):
    """Per-sample loop: torch.tensor_split parts; a sample shorter than s uses midpoint tokens."""
    rows = []
    for b in range(h.shape[0]):
        tokens = h[b][mask[b].bool()]
        n = len(tokens)
        feats = []
        for s in seq_splits:
            if n >= s:
                parts = torch.tensor_split(tokens, s)
            else:
                parts = [tokens[(2 * j + 1) * n // (2 * s)][None] for j in range(s)]
            for part in parts:
                v = part.mean(dim=0)
                for e in emb_splits:
                    feats += [chunk.mean() for chunk in torch.tensor_split(v, e)]
        rows.append(torch.stack(feats))
    return torch.stack(rows)


def _batch(B=5, T=12, E=48, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, E, generator=gen, dtype=F64)
    lengths = torch.tensor([12, 7, 1, 3, 10])[:B]
    mask = torch.arange(T)[None] < lengths[:, None]  # right padding
    return h, mask


@pytest.mark.parametrize(
    "seq_splits, emb_splits, dim",
    [((1, 2), (4, 8, 16), 84), ((1, 2), (2, 4, 8), 42), ((1,), (4, 8), 12)],
)
def test_pooled_dims_match_the_spec(seq_splits, emb_splits, dim):
    assert pooled_dim(seq_splits, emb_splits) == dim
    for E in (384, 32):  # a MiniLM hidden state and one head's slice of it
        h = torch.randn(2, 9, E)
        assert multiscale_pool(h, torch.ones(2, 9, dtype=torch.bool), seq_splits, emb_splits).shape == (2, dim)


@pytest.mark.parametrize("seq_splits, emb_splits", [((1, 2), (4, 8, 16)), ((1, 2, 3, 5), (3, 7)), ((4,), (48,))])
def test_matches_per_sample_reference(seq_splits, emb_splits):
    h, mask = _batch()
    expected = _reference_pool(h, mask, seq_splits, emb_splits)
    torch.testing.assert_close(multiscale_pool(h, mask, seq_splits, emb_splits), expected, rtol=0, atol=1e-12)


def test_appending_padding_changes_nothing():
    h, mask = _batch()
    pooled = multiscale_pool(h, mask)
    pad = torch.full((5, 6, 48), float("nan"), dtype=F64)
    padded = multiscale_pool(torch.cat([h, pad], 1), torch.cat([mask, torch.zeros(5, 6, dtype=torch.bool)], 1))
    torch.testing.assert_close(padded, pooled, rtol=0, atol=1e-12)
    garbage = multiscale_pool(torch.where(mask[..., None], h, 1e3), mask)  # padding values are ignored
    torch.testing.assert_close(garbage, pooled, rtol=0, atol=1e-12)
    # the same tokens left-padded (padding first) pool to the same vector
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # padding positions first
    left_h = torch.gather(h, 1, order[..., None].expand_as(h))
    left_mask = torch.gather(mask, 1, order)
    assert not torch.equal(left_mask, mask)
    torch.testing.assert_close(multiscale_pool(left_h, left_mask), pooled, rtol=0, atol=1e-12)


def test_known_values_by_hand():
    h = torch.arange(4 * 4, dtype=F64).reshape(1, 4, 4)  # token t = [4t, 4t+1, 4t+2, 4t+3]
    mask = torch.tensor([[1, 1, 1, 0]])  # three real tokens; 0/1 masks are accepted
    out = multiscale_pool(h, mask, seq_splits=(1, 2), emb_splits=(1, 2))
    # s=1: mean of tokens 0-2 = [4, 5, 6, 7]; s=2: parts {0, 1} -> [2, 3, 4, 5] and {2} -> [8, 9, 10, 11]
    expected = torch.tensor([[5.5, 4.5, 6.5, 3.5, 2.5, 4.5, 9.5, 8.5, 10.5]], dtype=F64)
    torch.testing.assert_close(out, expected)


def test_fewer_tokens_than_parts_uses_midpoint_tokens():
    h = torch.randn(1, 5, 8, dtype=F64)
    mask = torch.tensor([[True, True, False, False, False]])
    out = multiscale_pool(h, mask, seq_splits=(4,), emb_splits=(8,)).view(4, 8)
    torch.testing.assert_close(out, h[0, [0, 0, 1, 1]])  # 2 tokens over 4 parts
    one = multiscale_pool(h, mask & torch.tensor([[True, False, False, False, False]]), (3,), (8,))
    torch.testing.assert_close(one.view(3, 8), h[0, [0, 0, 0]])
    assert torch.isfinite(multiscale_pool(h[..., :2], mask, (1,), (4,))).all()  # E < e as well


def test_normalizer_matches_batch_statistics_and_freezes_in_eval():
    gen = torch.Generator().manual_seed(1)
    batches = [3.0 + 2.0 * torch.randn(n, 6, generator=gen, dtype=F64) for n in (1, 5, 40, 17)]
    norm = RunningNormalizer(6, eps=1e-6)
    for x in batches:
        out = norm(x)
    seen = torch.cat(batches).numpy()
    np.testing.assert_allclose(norm.mean.numpy(), seen.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(norm.var.numpy(), seen.var(axis=0), rtol=1e-12, atol=0)
    expected = (batches[-1] - torch.from_numpy(seen.mean(0))) / torch.sqrt(torch.from_numpy(seen.var(0)) + 1e-6)
    torch.testing.assert_close(out, expected)

    state = norm.state_dict()
    norm.eval()
    probe = torch.randn(8, 6, generator=gen).float()
    first = norm(probe)
    assert first.dtype == torch.float32
    assert torch.equal(norm(probe), first) and norm.count == state["count"]
    norm.train()
    norm(probe)
    assert norm.count == state["count"] + 8

    restored = RunningNormalizer(6, eps=1e-6).eval()
    restored.load_state_dict(state)
    torch.testing.assert_close(restored(probe), first)


def test_normalizer_before_data_is_near_identity():
    norm = RunningNormalizer(3).eval()
    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=F64)
    torch.testing.assert_close(norm(x), x / (1 + 1e-6) ** 0.5)


def test_slices_pool_each_part_of_the_embedding_on_its_own():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(3, 7, 24, generator=g)
    mask = torch.arange(7)[None] < torch.tensor([7, 4, 1])[:, None]
    sliced = multiscale_pool(h, mask, (1, 2), (2, 4), slices=4)
    assert sliced.shape == (3, 4, 18) and sliced.dtype == torch.float64
    for k in range(4):
        alone = multiscale_pool(h[..., 6 * k: 6 * (k + 1)].double(), mask, (1, 2), (2, 4))
        torch.testing.assert_close(sliced[:, k], alone, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="slices must be a positive divisor"):
        multiscale_pool(h, mask, slices=5)
