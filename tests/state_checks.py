"""Equality of saved method states, shared by the tests that compare them (imported by module name: pytest
puts this folder on sys.path for tests/conftest.py)."""

import math
from typing import Any, Callable

import torch


def assert_same_state(a: Any, b: Any, where: str = "state", skip: Callable[[str], bool] = lambda where: False,
                      tolerance: float = 0.0) -> None:
    """Recursive equality of two method states: tensors exactly (dtype and values), dicts by their keys,
    sequences item by item, anything else by value and type; ``skip(where)`` leaves a leaf out (a clock).
    With a ``tolerance``, floating tensors agree to that relative error (absolute: a tenth of it) and
    floats to a tenth of it."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        if tolerance and a.is_floating_point():
            assert torch.allclose(a, b, rtol=tolerance, atol=tolerance / 10), where
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}", skip, tolerance)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]", skip, tolerance)
    elif tolerance and isinstance(a, float):
        assert math.isclose(a, b, rel_tol=tolerance / 10), where
    elif not skip(where):
        assert a == b and type(a) is type(b), where
