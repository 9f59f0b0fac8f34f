"""Encoder hyper-parameters: one frozen dataclass, validated where it is built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of a BERT-family encoder plus our classifier head."""

    __pydantic_config__ = {"extra": "forbid"}  # run.json: a key we do not know is refused (dht.schema)

    vocab_size: int = 30522
    hidden_size: int = 384  # E
    num_layers: int = 6  # N_L
    num_heads: int = 12  # N_h
    intermediate_size: int = 1536  # FFN width I
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    num_classes: int = 2  # C
    pooling: str = "mean"  # "mean" over real tokens (spec §2) or "cls" (first token)
    pad_token_id: int = 0
    branch_classifiers: bool = False  # FastBERT: one extra classifier after each layer but the last
    acm_learners: int = 0  # ACM: N learners (and a gate) in place of every FFN; 0 keeps the dense FFNs
    acm_gate_hidden: int = 16  # ACM: the gate's hidden width

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                     "intermediate_size", "max_position", "type_vocab_size", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"EncoderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.acm_learners < 0 or (self.acm_learners and self.intermediate_size % self.acm_learners):
            raise ValueError(f"acm_learners must be 0 or divide intermediate_size {self.intermediate_size}, "
                             f"got {self.acm_learners}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"EncoderConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")

    @property
    def head_dim(self) -> int:
        """Width dh of one attention head."""
        return self.hidden_size // self.num_heads

    def replace(self, **changes: Any) -> "EncoderConfig":
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderConfig":
        """The shape from parsed JSON; SchemaError (a ValueError) naming the first wrong field."""
        from dht.schema import validated

        return validated(cls, data)
