"""dht: Dynamic Hierarchical Transformer classifiers and their baselines."""

__version__ = "0.1.0"
