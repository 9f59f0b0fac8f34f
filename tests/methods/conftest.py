"""Fixtures shared by the DHT method's tests."""

import functools

import pytest

from dht.training import setup


@pytest.fixture(scope="module")
def dataset_read_once():
    """The embedded dataset is read once for a module whose tests only read it (``pytestmark``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(setup, "read_dataset", functools.lru_cache(maxsize=None)(setup.read_dataset))
        yield
