"""Read texts to classify (``dht predict``): a CSV file, a plain text file, or standard input.

- A ``.csv`` file whose first row names a ``text`` column (other columns, ``label`` among them, are
  ignored), or a dataset split (``label,text`` or ``label,title,description``, read as in training).
- Any other file, or standard input: one text per line.

An empty text is refused rather than skipped, so that output line k is always input text k; any problem
raises :class:`DataError` naming the file (``<stdin>`` for standard input) and the line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dht.data.dataset import HEADERS, DataError, csv_records, is_label_cell, read_split, read_utf8

TEXT_COLUMN = "text"
STDIN = "-"


def read_texts(path: str | Path, num_classes: int) -> list[str]:
    """The texts of ``path`` in file order (``-``: standard input, one per line); ``num_classes`` checks
    the labels of a dataset split. Raises DataError naming the file and line."""
    if str(path) == STDIN:
        return lines_to_texts(sys.stdin.read(), Path("<stdin>"))
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return _csv_texts(path, num_classes)
    return lines_to_texts(read_utf8(path), path)


def lines_to_texts(text: str, path: Path) -> list[str]:
    """One text per line (``\n`` or ``\r\n``; other Unicode line separators stay inside a text, so output
    line k is input text k); a final newline ends the last text, any other blank line is an error."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    if not lines:
        raise DataError(path, "no texts (one text per line)")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataError(path, "empty line: one text per line, none empty", number)
    return [line.strip() for line in lines]


def _csv_texts(path: Path, num_classes: int) -> list[str]:
    records = csv_records(path)
    if not records:
        raise DataError(path, "file is empty")
    line, first = records[0]
    header = [cell.strip().lower() for cell in first]
    if TEXT_COLUMN not in header:  # no header naming the column: a dataset split, label first
        if tuple(header) not in HEADERS.values() and not is_label_cell(first[0]):
            raise DataError(path, f"no {TEXT_COLUMN!r} column in the header {','.join(first)!r} (a CSV to classify "
                            f"names one, or is a dataset split: label,text or label,title,description)", line)
        return list(read_split(path, num_classes).texts)
    column = header.index(TEXT_COLUMN)
    texts = []
    for line, row in records[1:]:
        if len(row) != len(header):
            raise DataError(path, f"expected {len(header)} columns as in the header, found {len(row)}", line)
        if not row[column].strip():
            raise DataError(path, "empty text", line)
        texts.append(row[column].strip())
    if not texts:
        raise DataError(path, "no data rows after the header")
    return texts
