"""Data path: read dataset folders, tokenise texts, pad them into batches."""

from dht.data.batching import Batch, collate, iterate_batches
from dht.data.dataset import DataError, Dataset, TextSplit, default_dataset_dir, read_dataset
from dht.data.texts import read_texts
from dht.data.tokenize import TextTokenizer

__all__ = [
    "Batch",
    "DataError",
    "Dataset",
    "TextSplit",
    "TextTokenizer",
    "collate",
    "default_dataset_dir",
    "iterate_batches",
    "read_dataset",
    "read_texts",
]
