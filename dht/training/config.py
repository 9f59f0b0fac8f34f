"""Run settings: what to train, on what, and how; saved as the run folder's run.json.

(Runs made before the name changed hold them in config.json; ``run_file`` finds either. The name moved
because transformers reads a folder's config.json as a model configuration.)"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every method (BL1's recipe: AdamW, warm-up, linear decay)."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4  # peak learning rate; MiniLM-sized models fine-tune well at 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # share of all steps spent warming up linearly from 0
    max_grad_norm: float = 1.0
    max_length: int = 128  # tokens per sample after truncation, [CLS] and [SEP] included
    max_train: int | None = None  # use a seeded random subset of this many training rows
    max_test: int | None = None  # likewise for the test split
    seed: int = 0
    pooling: str = "mean"  # "mean" (spec §2) or "cls"
    # The 30k-row word-embedding table is half of MiniLM's weights; on CPU its AdamW update costs as
    # much as a forward pass, and fine-tuning it changes little. Every method gets the same setting.
    freeze_word_embeddings: bool = True
    eval_batch_size: int = 64
    checkpoint_every: int = 100  # optimizer steps between checkpoints (and one at each epoch end)

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "eval_batch_size", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                flag = "--save-every" if name == "checkpoint_every" else "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"--lr must be finite and > 0, got {self.lr}")
        if not (0 <= self.weight_decay < math.inf and 0 < self.max_grad_norm < math.inf):
            raise ValueError(f"weight decay must be finite and >= 0 and the gradient-norm bound finite and > 0, "
                             f"got {self.weight_decay} and {self.max_grad_norm}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_length < 2:
            raise ValueError(f"max-length must be >= 2, got {self.max_length}")
        for name in ("max_train", "max_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {value}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run: method, data, backbone, optimisation and method options."""

    method: str = "full"
    data: str = ""  # dataset folder; "" means the embedded AG News
    backbone: str = "minilm-l6"
    train: TrainConfig = field(default_factory=TrainConfig)
    options: dict[str, Any] = field(default_factory=dict)  # method-specific settings

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        data = dict(data)
        train = TrainConfig(**data.pop("train", {}))
        return cls(train=train, **data)


RUN_FILE = "run.json"
LEGACY_RUN_FILE = "config.json"


def run_file(folder: str | Path) -> Path:
    """The file holding a run folder's settings: run.json, or config.json for runs made before (the path
    of run.json when neither exists)."""
    folder = Path(folder)
    if not (folder / RUN_FILE).is_file() and (folder / LEGACY_RUN_FILE).is_file():
        return folder / LEGACY_RUN_FILE
    return folder / RUN_FILE
