"""Turn texts into token ids with a backbone's ``tokenizer.json``.

The tokenizer truncates to ``max_length`` (special tokens included) and never pads:
batches are padded to their own longest sample by :mod:`dht.data.batching`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
PAD_TOKEN = "[PAD]"


class TextTokenizer:
    """Wrap a ``tokenizers`` tokenizer: add special tokens, truncate to max_length, no padding."""

    def __init__(self, tokenizer_json: str | Path, max_length: int = 128):
        if type(max_length) is not int or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2 (room for [CLS] and [SEP]), got {max_length!r}")
        path = Path(tokenizer_json)
        if not path.is_file():
            raise ValueError(f"{path}: tokenizer file not found")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception on bad JSON
            raise ValueError(f"{path}: cannot read tokenizer: {e}") from None
        self.pad_id = _pad_id(tokenizer, path)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.max_length = max_length
        # tokenizer.json files often ask for fixed-length padding; pad per batch instead.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer = tokenizer

    @classmethod
    def from_dir(cls, model_dir: str | Path, max_length: int = 128) -> TextTokenizer:
        """Load model_dir/tokenizer.json."""
        return cls(Path(model_dir) / TOKENIZER_FILE, max_length=max_length)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Return the token ids of each text, with special tokens, truncated, unpadded."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of str (not a single str)")
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return [e.ids for e in encodings]

    def __repr__(self) -> str:
        return f"TextTokenizer(max_length={self.max_length}, pad_id={self.pad_id})"


def _pad_id(tokenizer: Tokenizer, path: Path) -> int:
    """Return the padding token id: the file's padding setting, else the [PAD] token."""
    padding = tokenizer.padding
    if padding is not None and padding.get("pad_token") is not None:
        pad_id = tokenizer.token_to_id(padding["pad_token"])
        if pad_id is not None:
            return pad_id
    pad_id = tokenizer.token_to_id(PAD_TOKEN)
    if pad_id is None:
        raise ValueError(f"{path}: tokenizer has no padding token ({PAD_TOKEN})")
    return pad_id
