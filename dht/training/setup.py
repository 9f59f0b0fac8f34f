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
from dht.model import DynamicEncoder, resolve_backbone
from dht.training.config import RunConfig, read_run_file, run_file
from dht.training.hooks import Method, make_method, method_type


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
    holdout: EncodedSplit | None = None  # training rows kept out of training (--holdout), None without


def dataset_dir(run: RunConfig) -> Path:
    """The run's dataset folder (the embedded AG News when none is given)."""
    return Path(run.data) if run.data else default_dataset_dir()


def encode_split(tokenizer: TextTokenizer, split: TextSplit) -> EncodedSplit:
    return EncodedSplit(tokenizer.encode(split.texts), list(split.labels))


def resolve_device(spec: str | None = None) -> torch.device:
    """``--device``: ``auto`` (or None) is the GPU when torch sees one, else the CPU; ``cpu``; ``cuda[:N]``.

    On a GPU, float32 matrix products use TensorFloat-32 (torch's "high" precision), the usual setting
    for fine-tuning there; on the CPU nothing changes.
    """
    spec = spec or "auto"
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise ValueError(f"--device {spec!r}: not a device (use auto, cpu or cuda[:N])") from error
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {spec!r}: only cpu and cuda are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: torch sees no CUDA GPU on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        torch.set_float32_matmul_precision("high")
    return device


def prepare(run: RunConfig, data: str | None = None, device: str | None = None) -> Prepared:
    """Build a fresh run from its settings (pretrained backbone, new classifier, seeded) on ``device``.

    The method's options, and the files they name (a teacher run, a config file), are checked first,
    before any data is read."""
    run = check_options(run)
    where = resolve_device(device)
    dataset = read_dataset(dataset_dir(run) if data is None else Path(data))
    backbone = resolve_backbone(run.backbone)
    torch.manual_seed(run.train.seed)  # the classifier's initialisation
    model = backbone.build(dataset.num_classes, pooling=run.train.pooling)
    model.embeddings.word.weight.requires_grad_(not run.train.freeze_word_embeddings)
    prepared = _assemble(run, dataset, backbone.tokenizer_json, model)
    model.to(where)  # after the method has added its modules (FastBERT's branches), before it copies a teacher
    prepared.method.check_training_rows(len(prepared.train))  # before anything is written
    prepared.method.check_device()
    prepared.method.initialise()
    return prepared


def check_options(run: RunConfig) -> RunConfig:
    """Validate the run's method options and the files they name (a ValueError naming the flag); return
    the run with every option written out, defaults included, and its data folder made absolute, as its
    run.json records them."""
    kind = method_type(run.method)
    options = kind.Options.from_dict(run.options, kind.name)
    options.check_training_inputs()
    data = str(Path(run.data).resolve()) if run.data else ""  # absolute: the run is evaluated from anywhere
    return replace(run, options=options.to_dict(), data=data)


@dataclass
class SavedRun:
    """A finished run rebuilt without its data: what prediction needs."""

    run: RunConfig
    model: DynamicEncoder
    method: Method
    tokenizer: TextTokenizer
    tokenizer_json: Path
    classes: tuple[str, ...]  # class names; label k is classes[k]


def open_run(run_dir: Path, overrides: dict | None = None, device: str | None = None) -> SavedRun:
    """Rebuild a finished run (its run.json, tokenizer.json, model.safetensors and the method's state)
    on ``device``, without reading its dataset; ``overrides`` replaces inference options the run already
    has (e.g. FastBERT's speed). Raises ValueError naming the folder when it is not a finished run."""
    from safetensors.torch import load_file

    from dht.training.checkpoint import damaged, join_state, load_model

    where = resolve_device(device)
    for path in (run_file(run_dir), run_dir / "tokenizer.json", run_dir / "model.safetensors"):
        if not path.is_file():
            raise ValueError(f"{run_dir}: not a finished run (no {path.name})")
    if (run_dir / "dht_head.safetensors").is_file():
        raise ValueError(f"{run_dir}: an export (dht export) for transformers, not a run folder; give the run itself")
    saved = read_run_file(run_dir)
    run = saved.run
    kind = method_type(run.method)
    changeable = {f.name for f in kind.Options.fields() if f.inference}
    for key in overrides or {}:
        if key not in changeable:
            raise ValueError(f"{run_dir}: a {run.method} run has no inference option --{key.replace('_', '-')} "
                             f"to change")
    try:  # the saved options alone first: a bad one is the file's fault, not the command line's
        kind.Options.from_dict(run.options, kind.name)
    except ValueError as error:
        raise ValueError(f"{run_file(run_dir)}: {error}") from None
    run = replace(run, options={**run.options, **(overrides or {})})
    kind.Options.from_dict(run.options, kind.name)  # values checked before the weights are read
    config = saved.encoder
    tokenizer = TextTokenizer(run_dir / "tokenizer.json", max_length=run.train.max_length)
    model = DynamicEncoder(config)
    try:
        load_model(run_dir / "model.safetensors", model)
    except Exception as error:  # safetensors and load_state_dict raise several kinds
        raise ValueError(f"{run_dir / 'model.safetensors'}: cannot load this run's weights "
                         f"({str(error).splitlines()[0][:200]})") from None
    method = make_method(model, run)
    model.to(where)
    method.check_device()
    if (run_dir / "method.json").is_file():
        with damaged(run_dir / "method.safetensors"):
            tensors = load_file(str(run_dir / "method.safetensors"))
        with damaged(run_dir / "method.json"):
            method.load_state_dict(join_state(json.loads((run_dir / "method.json").read_text(encoding="utf-8")),
                                              tensors))
    classes = saved.dataset.classes
    return SavedRun(run, model, method, tokenizer, run_dir / "tokenizer.json", classes)


def prepare_saved(run_dir: Path, data: str | None = None, overrides: dict | None = None,
                  device: str | None = None) -> Prepared:
    """A finished run (``open_run``) with its dataset, or another folder's with the same class names, read
    and tokenised, for evaluation; only test.csv and classes.txt are needed (train.csv for ``--budget``)."""
    saved = open_run(run_dir, overrides, device)
    dataset = read_dataset(dataset_dir(saved.run) if data is None else Path(data), need_train=False)
    if dataset.classes != saved.classes:  # names and order: label k must mean what it meant in training
        where = (Path(data) if data is not None else dataset_dir(saved.run)) / "classes.txt"
        raise ValueError(f"{where}: names {list(dataset.classes)}, but {run_dir} was trained for "
                         f"{list(saved.classes)} (same names, same order)")
    # Another dataset is scored on all of its test rows, and has no held-out rows: the run's --max-test
    # subset and --holdout rows were of its own data.
    subsets = saved.run if data is None else replace(saved.run, train=replace(saved.run.train, max_test=None,
                                                                                holdout=0))
    train, test, holdout = encode_splits(subsets, dataset, saved.tokenizer)
    return Prepared(saved.run, dataset, saved.tokenizer_json, saved.model, saved.method, train, test,
                    saved.tokenizer.pad_id, holdout)


def encode_splits(run: RunConfig, dataset: Dataset,
                  tokenizer: TextTokenizer) -> tuple[EncodedSplit, EncodedSplit, EncodedSplit | None]:
    """The run's training and test subsets (``--max-train``, ``--max-test``, seeded) and the training rows
    kept out (``--holdout``, seeded; None without), tokenised."""
    train, held = dataset.train.subset(run.train.max_train, seed=run.train.seed), None
    if run.train.holdout and len(train):  # a dataset read for evaluation alone has no training rows
        train, held = train.split_off(run.train.holdout, seed=run.train.seed)
    return (encode_split(tokenizer, train), encode_split(tokenizer, dataset.test.subset(run.train.max_test,
                                                                                         seed=run.train.seed)),
            None if held is None else encode_split(tokenizer, held))


def _assemble(run: RunConfig, dataset: Dataset, tokenizer_json: Path, model: DynamicEncoder) -> Prepared:
    tokenizer = TextTokenizer(tokenizer_json, max_length=run.train.max_length)
    if run.train.max_length > model.config.max_position:
        raise ValueError(f"--max-length {run.train.max_length} exceeds the backbone's "
                         f"{model.config.max_position} positions")
    if tokenizer.vocab_size > model.config.vocab_size:  # a token id past the table would fail mid-run
        raise ValueError(f"{tokenizer_json}: the tokenizer has {tokenizer.vocab_size} tokens but the backbone's "
                         f"embedding table has {model.config.vocab_size} rows")
    train, test, holdout = encode_splits(run, dataset, tokenizer)
    return Prepared(run, dataset, tokenizer_json, model, make_method(model, run), train, test, tokenizer.pad_id,
                    holdout)
