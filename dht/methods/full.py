"""BL1: fine-tune the full model on every sample (spec §8), the reference every ratio is taken against.

The base hooks of ``dht.training.hooks.Method`` are exactly this method; it only names them.
"""

from __future__ import annotations

from dht.training.hooks import Method, register


@register
class FullMethod(Method):
    """BL1: every layer and every head for every sample, cross-entropy on the labels."""

    name = "full"
    title = "BL1 (full model)"
