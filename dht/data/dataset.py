"""Read a text-classification dataset folder and check every row.

A dataset is a folder holding three files:

- ``classes.txt``: one class name per line; line k names label k (1-based).
- ``train.csv`` and ``test.csv``: either ``label,text`` rows (an optional first row
  ``label,text`` is a header) or the official AG News form ``"label","title","description"``
  (no header in the official files; a first row ``label,title,description`` is read as one),
  whose text is ``title + ' ' + description``.

Any problem raises :class:`DataError` naming the file and, where it concerns one record,
the physical line (1-based, as an editor shows it) on which that record starts.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import torch

CLASSES_FILE = "classes.txt"
SPLIT_FILES = {"train": "train.csv", "test": "test.csv"}
# Header rows, by column count; compared after stripping and lower-casing each cell.
HEADERS = {2: ("label", "text"), 3: ("label", "title", "description")}
_UTF8_BOM = b"\xef\xbb\xbf"
_INTEGER = re.compile(r"[0-9]+")


class DataError(ValueError):
    """Bad input data; str(e) is one line: '<path>:<line>: <problem>', or '<path>: <problem>'."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path = Path(path)
        self.problem = " ".join(problem.split())  # keep the message on one line
        self.line = line
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {self.problem}")


@dataclass(frozen=True)
class TextSplit:
    """One split of a dataset: texts with their 0-based class labels."""

    texts: tuple[str, ...]  # one string per sample
    labels: tuple[int, ...]  # 0-based class indices, aligned with texts
    path: Path  # the file the split was read from

    def __post_init__(self):
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "path", Path(self.path))
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        if not all(isinstance(t, str) for t in self.texts):
            raise ValueError("texts must all be str")
        if not all(type(y) is int and y >= 0 for y in self.labels):
            raise ValueError("labels must all be non-negative int")

    def __len__(self) -> int:
        """Return the number of samples."""
        return len(self.texts)

    def split_off(self, n: int, seed: int) -> tuple[TextSplit, TextSplit]:
        """(the rest, n samples drawn by a seeded permutation), both in file order; a ValueError if n leaves
        no sample in the rest."""
        if n >= len(self):
            raise ValueError(f"--holdout {n} keeps every one of the {len(self)} training rows out of training")
        held = self._drawn(n, seed)
        chosen = set(held)
        return self._rows([i for i in range(len(self)) if i not in chosen]), self._rows(held)

    def subset(self, n: int | None, seed: int) -> TextSplit:
        """Return n samples drawn by a seeded permutation, kept in file order; None or n >= len gives self."""
        if n is not None and (type(n) is not int or n < 1):
            raise ValueError(f"subset size must be a positive int or None, got {n!r}")
        if type(seed) is not int:
            raise ValueError(f"seed must be an int, got {seed!r}")
        if n is None or n >= len(self):
            return self
        return self._rows(self._drawn(n, seed))

    def _drawn(self, n: int, seed: int) -> list[int]:
        """The first ``n`` indices of a permutation seeded with ``seed``, in file order."""
        generator = torch.Generator().manual_seed(seed)
        return sorted(torch.randperm(len(self), generator=generator)[:n].tolist())

    def _rows(self, indices: list[int]) -> TextSplit:
        """The samples at ``indices``, in that order."""
        return TextSplit(texts=tuple(self.texts[i] for i in indices), labels=tuple(self.labels[i] for i in indices),
                         path=self.path)


@dataclass(frozen=True)
class Dataset:
    """A named dataset: class names and its train and test splits."""

    name: str  # folder name, e.g. "ag_news"
    classes: tuple[str, ...]  # class names; label k is classes[k]
    train: TextSplit
    test: TextSplit

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(self.classes))
        if not self.name:
            raise ValueError("dataset name must be non-empty")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"need at least 2 distinct class names, got {self.classes!r}")
        for split in (self.train, self.test):
            if any(y >= len(self.classes) for y in split.labels):
                raise ValueError(f"{split.path}: label outside 0..{len(self.classes) - 1}")

    @property
    def num_classes(self) -> int:
        """Return the number of classes."""
        return len(self.classes)


def default_dataset_dir() -> Path:
    """Return the folder of the AG News sample embedded in the package."""
    return Path(__file__).resolve().parent.parent / "datasets" / "ag_news"


def read_dataset(directory: str | Path, need_train: bool = True) -> Dataset:
    """Read classes.txt, train.csv and test.csv from a folder, checking every row; with ``need_train``
    False a folder without train.csv gives an empty training split (evaluation reads only the test)."""
    if not isinstance(directory, (str, Path)):
        raise TypeError(f"directory must be str or Path, got {type(directory).__name__}")
    directory = Path(directory)
    if not directory.exists():
        raise DataError(directory, "no such directory")
    if not directory.is_dir():
        raise DataError(directory, "not a directory")
    classes = read_classes(directory / CLASSES_FILE)
    train_path = directory / SPLIT_FILES["train"]
    if need_train or train_path.exists():
        train = read_split(train_path, len(classes))
    else:
        train = TextSplit(texts=(), labels=(), path=train_path)
    test = read_split(directory / SPLIT_FILES["test"], len(classes))
    return Dataset(name=directory.resolve().name, classes=classes, train=train, test=test)


def read_classes(path: Path) -> tuple[str, ...]:
    """Read one class name per line; blank lines are allowed only at the end."""
    lines = read_utf8(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(path, "file is empty")
    names: dict[str, int] = {}
    for line_no, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            raise DataError(path, "empty class name", line_no)
        if name in names:
            raise DataError(path, f"duplicate class name {name!r} (first on line {names[name]})", line_no)
        names[name] = line_no
    if len(names) < 2:
        raise DataError(path, "needs at least 2 classes")
    return tuple(names)


def read_split(path: Path, num_classes: int) -> TextSplit:
    """Read one CSV split; labels 1..num_classes in the file become 0-based."""
    records = csv_records(path)
    if not records:
        raise DataError(path, "file is empty")
    first_line, first = records[0]
    width = len(first)
    if width not in HEADERS:
        expected = "expected 2 columns (label,text) or 3 (label,title,description)"
        raise DataError(path, f"{expected}, found {width}", first_line)
    if tuple(cell.strip().lower() for cell in first) == HEADERS[width]:
        records = records[1:]
        if not records:
            raise DataError(path, "no data rows after the header")
    elif not is_label_cell(first[0]):  # a header of other names, or a bad first label
        raise DataError(path, f"first row {_show(','.join(first))} is neither the header {','.join(HEADERS[width])} "
                        "nor a row whose label is an integer", first_line)
    texts, labels = [], []
    for line, row in records:
        if len(row) != width:
            expected = f"expected {width} columns ({','.join(HEADERS[width])})"
            raise DataError(path, f"{expected}, found {len(row)}", line)
        labels.append(_parse_label(row[0], num_classes, path, line))
        text = " ".join(row[1:]).strip()  # 3-column form: title + ' ' + description
        if not text:
            raise DataError(path, "empty text", line)
        texts.append(text)
    return TextSplit(texts=tuple(texts), labels=tuple(labels), path=path)


def is_label_cell(cell: str) -> bool:
    """Whether a CSV cell reads as a label (an integer, surrounding spaces aside); a header's does not."""
    return _INTEGER.fullmatch(cell.strip()) is not None


def _parse_label(cell: str, num_classes: int, path: Path, line: int) -> int:
    """Turn a 1-based label cell into a 0-based class index."""
    cell = cell.strip()
    if not is_label_cell(cell):
        raise DataError(path, f"label {_show(cell)} is not an integer", line)
    label = int(cell)
    if not 1 <= label <= num_classes:
        raise DataError(path, f"label {label} is outside 1..{num_classes}", line)
    return label - 1


def csv_records(path: Path) -> list[tuple[int, list[str]]]:
    """Return (start line, cells) for each non-blank CSV record of a file."""
    text = read_utf8(path)
    # The csv module refuses fields over 131,072 characters by default; a text of any length is valid
    # CSV (the tokenizer truncates it), so the limit is raised to the file's own size.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records = []
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return records
        except csv.Error as e:
            raise DataError(path, f"malformed CSV: {e}", start) from None
        if row:  # a blank line yields [] and is skipped
            records.append((start, row))
        start = reader.line_num + 1  # line_num is the line where the record ended


def read_utf8(path: Path) -> str:
    """Read a whole file as UTF-8 (a leading byte-order mark is dropped)."""
    if not path.is_file():
        raise DataError(path, "file not found")
    data = path.read_bytes()
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(path, f"not valid UTF-8 (byte 0x{data[e.start]:02x})", line) from None


def _show(value: str, limit: int = 40) -> str:
    """Quote a cell for an error message, shortened to about limit characters."""
    return repr(value if len(value) <= limit else value[:limit] + "...")
