"""Run settings: what to train, on what, and how; saved as the run folder's run.json.

(Runs made before the name changed hold them in config.json; ``run_file`` finds either. The name moved
because transformers reads a folder's config.json as a model configuration.)"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from dht.schema import SchemaError, validated


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every method (BL1's recipe: AdamW, warm-up, linear decay)."""

    __pydantic_config__ = {"extra": "forbid"}  # run.json: a key we do not know is refused (dht.schema)

    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4  # peak learning rate; MiniLM-sized models fine-tune well at 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # share of all steps spent warming up linearly from 0
    max_grad_norm: float = 1.0
    max_length: int = 128  # tokens per sample after truncation, [CLS] and [SEP] included
    max_train: int | None = None  # use a seeded random subset of this many training rows
    max_test: int | None = None  # likewise for the test split
    # Training rows kept out of training (seeded, after --max-train): `dht evaluate --budget` sets its knob
    # on them, rows the network has not fitted, as the test rows it will meet (docs/front.md).
    holdout: int = 0
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
            raise ValueError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_length < 2:
            raise ValueError(f"--max-length must be >= 2, got {self.max_length}")
        if self.holdout < 0:
            raise ValueError(f"--holdout must be >= 0, got {self.holdout}")
        for name in ("max_train", "max_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run: method, data, backbone, optimisation and method options."""

    __pydantic_config__ = {"extra": "forbid"}

    method: str = "full"
    data: str = ""  # dataset folder; "" means the embedded AG News
    backbone: str = "minilm-l6"
    train: TrainConfig = field(default_factory=TrainConfig)
    options: dict[str, Any] = field(default_factory=dict)  # method-specific settings

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """The settings from parsed JSON; SchemaError (a ValueError) naming the first wrong field."""
        return validated(cls, data)


RUN_FILE = "run.json"
LEGACY_RUN_FILE = "config.json"


def run_file(folder: str | Path) -> Path:
    """The file holding a run folder's settings: run.json, or config.json for runs made before (the path
    of run.json when neither exists)."""
    folder = Path(folder)
    if not (folder / RUN_FILE).is_file() and (folder / LEGACY_RUN_FILE).is_file():
        return folder / LEGACY_RUN_FILE
    return folder / RUN_FILE


@dataclass(frozen=True)
class DatasetRecord:
    """run.json's ``dataset``: the data a run was trained on (its name, absolute folder, class names)."""

    name: str
    path: str
    classes: tuple[str, ...]


@dataclass(frozen=True)
class RunFile:
    """A run folder's run.json: the run's settings, its encoder's shape (an ``EncoderConfig``; typed Any
    here because importing dht.model loads torch, which ``import dht`` must not) and its dataset."""

    run: RunConfig
    encoder: Any
    dataset: DatasetRecord


def read_run_file(folder: str | Path) -> RunFile:
    """A run folder's settings, every field checked (``dht.schema``); a ValueError naming the file and
    the field when the file is missing, cut, not JSON or not a run's settings."""
    from dht.model.config import EncoderConfig

    with _run_file_errors(folder) as path:
        saved = validated(RunFile, json.loads(path.read_text(encoding="utf-8")))
        return dataclasses.replace(saved, encoder=validated(EncoderConfig, saved.encoder, at="encoder"))


def read_run_settings(folder: str | Path) -> RunConfig:
    """Only the ``run`` part of a run folder's run.json, checked as ``read_run_file`` checks it: what a
    command needs to refuse flags before anything is loaded (``dht evaluate``, ``--resume``)."""
    return _read_part(folder, "run", RunConfig)


def read_run_dataset(folder: str | Path) -> DatasetRecord:
    """Only the ``dataset`` part of a run folder's run.json (its class names, without loading torch)."""
    return _read_part(folder, "dataset", DatasetRecord)


def _read_part(folder: str | Path, key: str, shape: Any) -> Any:
    with _run_file_errors(folder) as path:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return validated(shape, saved.get(key) if isinstance(saved, dict) else saved, at=key)


@contextlib.contextmanager
def _run_file_errors(folder: str | Path) -> Iterator[Path]:
    """Yield the folder's run.json path; turn any failure to read it into one ValueError naming it."""
    path = run_file(folder)
    try:
        yield path
    except FileNotFoundError:
        raise ValueError(f"{folder}: not a run folder (no {path.name})") from None
    except (SchemaError, ValueError, UnicodeDecodeError) as error:  # json's errors are ValueErrors
        raise ValueError(f"{path}: not a dht run's settings ({error})") from None
