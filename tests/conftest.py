"""Shared fixtures: tiny random encoders keep the suite fast."""

import functools

import pytest
import torch

import dht.methods  # noqa: F401  (registers the built-in methods, as the CLI and the bench do)
from dht.model import DynamicEncoder, EncoderConfig


def pytest_configure(config) -> None:
    """The whole suite runs single-threaded: on a shared 2-core machine OpenMP barriers stall tiny ops
    (a loaded run took 446 s with two threads and 121 s with one). Nothing here times anything."""
    torch.set_num_threads(1)


def tiny_config(**changes) -> EncoderConfig:
    """A 4-layer, 4-head, 32-wide encoder over a small vocabulary."""
    base = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=64,
                         max_position=64, num_classes=3)
    return base.replace(**changes)


@pytest.fixture
def tiny_model() -> DynamicEncoder:
    torch.manual_seed(0)
    return DynamicEncoder(tiny_config()).eval()


def random_batch(batch: int = 5, length: int = 12, vocab: int = 100, seed: int = 0):
    """Token ids (B, T) and a right-padded mask with varied lengths (sample 0 is full length)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    lengths = torch.randint(2, length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return ids.masked_fill(~mask, 0), mask


@pytest.fixture(scope="module")
def dataset_read_once():
    """The embedded dataset is read once for a module whose tests only read it (its ``pytestmark``)."""
    from dht.training import setup

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(setup, "read_dataset", functools.lru_cache(maxsize=None)(setup.read_dataset))
        yield


@pytest.fixture
def float32_products():
    """A call that makes matrix products float32 (no TF32, which a CUDA run turns on); undone after the test."""
    before = torch.get_float32_matmul_precision()
    yield lambda: torch.set_float32_matmul_precision("highest")
    torch.set_float32_matmul_precision(before)
