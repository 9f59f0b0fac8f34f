"""Backbones load strictly, and the full plan equals Hugging Face's BertModel on real weights."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dht.data import TextTokenizer
from dht.model import BackboneError, resolve_backbone
from dht.model.backbones import BackboneWarning, minilm_dir


def test_full_plan_matches_transformers_bert_on_minilm_weights():
    transformers = pytest.importorskip("transformers")
    backbone = resolve_backbone("minilm-l6")
    ours = backbone.build(num_classes=4).eval()
    theirs = transformers.BertModel.from_pretrained(str(backbone.directory), attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (4, 40), generator=g)
    mask = torch.arange(40)[None, :] < torch.tensor([40, 31, 12, 5])[:, None]
    ids = ids.masked_fill(~mask, 0)
    with torch.no_grad():
        h = ours.run_plan(ours.embed(ids), mask, ours.full_plan())
        reference = theirs(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert (h - reference)[mask].abs().max() <= 1e-4
    assert backbone.config.num_layers == 6 and backbone.config.num_heads == 12


def copy_minilm(tmp_path, edit):
    """Copy the MiniLM directory with its weights changed by ``edit(dict) -> dict``."""
    target = tmp_path / "bert"
    target.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(minilm_dir() / name, target / name)
    save_file(edit(load_file(str(minilm_dir() / "model.safetensors"))), str(target / "model.safetensors"))
    return target


def test_local_directory_with_bert_prefix_loads(tmp_path):
    directory = copy_minilm(tmp_path, lambda w: {"bert." + k: v for k, v in w.items()})
    model = resolve_backbone(str(directory)).build(num_classes=2)
    reference = resolve_backbone("minilm-l6").build(num_classes=2)
    assert torch.equal(model.layers[5].ffn_out.weight, reference.layers[5].ffn_out.weight)


@pytest.mark.parametrize("edit, message", [
    (lambda w: {**w, "encoder.layer.0.extra.weight": torch.zeros(2)}, "unknown weights"),
    (lambda w: {k: v for k, v in w.items() if k != "encoder.layer.3.output.dense.weight"}, "missing weight"),
    (lambda w: {**w, "encoder.layer.2.output.dense.bias": torch.zeros(7)}, "shape"),
])
def test_strict_loading_rejects_bad_checkpoints(tmp_path, edit, message):
    directory = copy_minilm(tmp_path, edit)
    with pytest.raises(BackboneError, match=message):
        resolve_backbone(str(directory)).build(num_classes=2)


def test_bad_backbone_specs(tmp_path):
    with pytest.raises(BackboneError, match="unknown backbone"):
        resolve_backbone("no-such-model")
    with pytest.raises(BackboneError, match="config.json: missing"):
        resolve_backbone(str(tmp_path))
    directory = copy_minilm(tmp_path, lambda w: w)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(BackboneError, match="hidden_act"):
        resolve_backbone(str(directory))


def test_tiny_backbone_is_random_and_small():
    backbone = resolve_backbone("tiny")
    assert backbone.directory is None and backbone.config.hidden_size == 32
    assert backbone.build(num_classes=3).classifier.out_features == 3


def test_a_sequence_classifier_folder_loads_its_encoder_and_drops_its_head(tmp_path):
    directory = copy_minilm(tmp_path, lambda w: {**{"bert." + k: v for k, v in w.items()},
                                                 "classifier.weight": torch.zeros(2, 384),
                                                 "classifier.bias": torch.zeros(2)})
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "architectures": ["BertForSequenceClassification"]}))
    with pytest.warns(BackboneWarning, match=r"dropped the checkpoint's classification head \(classifier.bias, "
                                             r"classifier.weight\)"):
        model = resolve_backbone(str(directory)).build(num_classes=4)
    reference = resolve_backbone("minilm-l6").build(num_classes=4)
    assert torch.equal(model.layers[3].attention.qkv.weight, reference.layers[3].attention.qkv.weight)


def test_a_vocab_only_folder_gets_the_same_tokens_as_tokenizer_json(tmp_path):
    directory = copy_minilm(tmp_path, lambda w: w)
    (directory / "tokenizer.json").unlink()
    shutil.copy(minilm_dir() / "vocab.txt", directory / "vocab.txt")
    backbone = resolve_backbone(str(directory))
    assert backbone.tokenizer_json.parent != directory  # built, not written into the user's folder
    texts = ["Héllo, World! Stocks fell 3.5% on Wall St.", "naïve café 東京 tokenization", "x " * 300]
    built = TextTokenizer(backbone.tokenizer_json).encode(texts)
    assert built == TextTokenizer(minilm_dir() / "tokenizer.json").encode(texts)
    (directory / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(BackboneError, match=r"vocab.txt: no \[CLS\] token"):
        resolve_backbone(str(directory))
    (directory / "vocab.txt").unlink()
    with pytest.raises(BackboneError, match="no tokenizer.json and no vocab.txt"):
        resolve_backbone(str(directory))


@pytest.mark.parametrize("model_type", ["roberta", "distilbert", "xlm-roberta"])
def test_other_architectures_are_refused_in_one_line(tmp_path, model_type):
    directory = copy_minilm(tmp_path, lambda w: w)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
    with pytest.raises(BackboneError, match=f"model_type '{model_type}' is not supported") as error:
        resolve_backbone(str(directory))
    assert "\n" not in str(error.value)
