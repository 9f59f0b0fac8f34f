"""Contextual bandits of DHT: LinUCB (§3.1), logistic Thompson semi-bandit (§3.2), contexts (§7)."""

from dht.bandits.context import RunningNormalizer, multiscale_pool, pooled_dim
from dht.bandits.linucb import LinUCB, LinUCBConfig
from dht.bandits.thompson import LogisticTS, LogisticTSConfig

__all__ = [
    "LinUCB",
    "LinUCBConfig",
    "LogisticTS",
    "LogisticTSConfig",
    "RunningNormalizer",
    "multiscale_pool",
    "pooled_dim",
]
