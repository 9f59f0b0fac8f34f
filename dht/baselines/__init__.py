"""Baselines beside DHT (spec §8): BL1 is the base Method (full model); BL2 and BL3 live here."""

from dht.baselines.distil import DistilMethod, distillation_loss, student_layers
from dht.baselines.fastbert import FastBERTMethod, early_exit_predict, normalised_entropy

__all__ = ["DistilMethod", "FastBERTMethod", "distillation_loss", "early_exit_predict", "normalised_entropy",
           "student_layers"]
