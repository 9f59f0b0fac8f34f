"""dht.bandits.context: where multiscale pooling (§7.1) builds its weights, and the running normaliser's
(§7.2) input check in eval mode."""

import pytest
import torch

from dht.bandits import RunningNormalizer, context, multiscale_pool

F64 = torch.float64


def test_pooling_builds_its_embedding_weights_on_the_device_of_h():
    """The embedding-part weights are made on h's device, not on torch's default device: with the
    default device set to "meta", pooling CPU states still gives the plain CPU result."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 8, generator=gen, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    expected = multiscale_pool(h, mask, (1, 2), (2, 4))
    context._embedding_weights.cache_clear()  # weights are cached per (width, splits, device)
    try:
        with torch.device("meta"):
            out = multiscale_pool(h, mask, (1, 2), (2, 4))
    finally:
        context._embedding_weights.cache_clear()  # drop any weights made under the meta default
    assert out.device.type == "cpu" and torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.bool])
def test_a_frozen_normaliser_rejects_non_floating_contexts(dtype):
    """§7.2 normalises float contexts; in eval mode (statistics frozen, no update runs) an integer or
    bool x is still refused with a ValueError rather than normalised and cast back to its dtype."""
    norm = RunningNormalizer(3)
    norm(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], dtype=F64))
    norm.eval()
    with pytest.raises(ValueError, match="floating-point"):
        norm(torch.ones(2, 3, dtype=dtype))
