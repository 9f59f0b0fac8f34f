"""Prepare a run: read and check the data, resolve the backbone, tokenise, build the model.

Everything that can reject bad input happens here, before a run folder is created, so a bad
input writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dht.data import Dataset, TextSplit, TextTokenizer, default_dataset_dir, read_dataset
from dht.model import DynamicEncoder, EncoderConfig, resolve_backbone
from dht.training.config import RunConfig
from dht.training.methods import Method, make_method

import dht.baselines  # noqa: E402,F401  (registers "distil" and "fastbert")
import dht.search.method  # noqa: E402,F401  (registers the "dht" method)


@dataclass
class EncodedSplit:
    """A split's token ids and labels, ready for batching."""

    ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Prepared:
    """The pieces of a run, built and checked."""

    run: RunConfig
    dataset: Dataset
    tokenizer_json: Path
    model: DynamicEncoder
    method: Method
    train: EncodedSplit
    test: EncodedSplit
    pad_id: int


def dataset_dir(run: RunConfig) -> Path:
    """The run's dataset folder (the embedded AG News when none is given)."""
    return Path(run.data) if run.data else default_dataset_dir()


def encode_split(tokenizer: TextTokenizer, split: TextSplit) -> EncodedSplit:
    return EncodedSplit(tokenizer.encode(split.texts), list(split.labels))


def prepare(run: RunConfig, data: str | None = None) -> Prepared:
    """Build a fresh run from its settings (pretrained backbone, new classifier, seeded)."""
    dataset = read_dataset(dataset_dir(run) if data is None else Path(data))
    backbone = resolve_backbone(run.backbone)
    torch.manual_seed(run.train.seed)  # the classifier's initialisation
    model = backbone.build(dataset.num_classes, pooling=run.train.pooling)
    model.embeddings.word.weight.requires_grad_(not run.train.freeze_word_embeddings)
    prepared = _assemble(run, dataset, backbone.tokenizer_json, model)
    prepared.method.initialise()
    return prepared


def prepare_saved(run_dir: Path, data: str | None = None, overrides: dict | None = None) -> Prepared:
    """Rebuild a saved run (its config.json, tokenizer.json and model.safetensors); ``overrides`` replaces
    inference options the run already has (e.g. FastBERT's speed)."""
    from dht.training.checkpoint import load_model

    saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    run = RunConfig.from_dict(saved["run"])
    for key in overrides or {}:
        if key not in run.options:
            raise ValueError(f"{run_dir}: a {run.method} run has no option {key!r} to change")
    run = replace(run, options={**run.options, **(overrides or {})})
    dataset = read_dataset(dataset_dir(run) if data is None else Path(data))
    config = EncoderConfig.from_dict(saved["encoder"])
    if dataset.num_classes != config.num_classes:
        raise ValueError(f"{run_dir} was trained for {config.num_classes} classes, "
                         f"but the data has {dataset.num_classes}")
    model = DynamicEncoder(config)
    load_model(run_dir / "model.safetensors", model)
    return _assemble(run, dataset, run_dir / "tokenizer.json", model)


def _assemble(run: RunConfig, dataset: Dataset, tokenizer_json: Path, model: DynamicEncoder) -> Prepared:
    tokenizer = TextTokenizer(tokenizer_json, max_length=run.train.max_length)
    if run.train.max_length > model.config.max_position:
        raise ValueError(f"max-length {run.train.max_length} exceeds the backbone's "
                         f"{model.config.max_position} positions")
    train = encode_split(tokenizer, dataset.train.subset(run.train.max_train, seed=run.train.seed))
    test = encode_split(tokenizer, dataset.test.subset(run.train.max_test, seed=run.train.seed))
    return Prepared(run, dataset, tokenizer_json, model, make_method(model, run), train, test, tokenizer.pad_id)
