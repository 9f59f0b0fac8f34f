"""Tests for dht.data.dataset: reading dataset folders and rejecting bad input."""

from pathlib import Path

import pytest

from dht.data import DataError, Dataset, TextSplit, default_dataset_dir, read_dataset

CLASSES = "World\nSports\nBusiness\nSci/Tech\n"


def make_dataset(root: Path, train, test="label,text\n1,a test\n", classes=CLASSES) -> Path:
    """Write a dataset folder under root and return it."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in (("train.csv", train), ("test.csv", test), ("classes.txt", classes)):
        if content is None:
            continue
        data = content.encode("utf-8") if isinstance(content, str) else content
        (root / name).write_bytes(data)
    return root


def raises_at(directory: Path, file: str, line: int | None) -> DataError:
    """Load directory, expect a one-line DataError naming file and line, and return it."""
    with pytest.raises(DataError) as info:
        read_dataset(directory)
    message = str(info.value)
    assert "\n" not in message
    expected = f"{directory / file}:{line}: " if line is not None else f"{directory / file}: "
    assert message.startswith(expected), message
    assert info.value.line == line
    return info.value


# --- forms that load -------------------------------------------------------------------


def test_header_form_loads_with_zero_based_labels(tmp_path):
    d = make_dataset(tmp_path / "tiny", "label,text\n1,first\n4,\"second, with comma\"\n")
    ds = read_dataset(d)
    assert ds.name == "tiny"
    assert ds.classes == ("World", "Sports", "Business", "Sci/Tech")
    assert ds.num_classes == 4
    assert ds.train.texts == ("first", "second, with comma")
    assert ds.train.labels == (0, 3)
    assert ds.train.path == d / "train.csv"
    assert len(ds.test) == 1


def test_headerless_two_column_form_loads(tmp_path):
    ds = read_dataset(make_dataset(tmp_path, "2,hello\n3,world\n"))
    assert ds.train.texts == ("hello", "world")
    assert ds.train.labels == (1, 2)


def test_official_three_column_form_joins_title_and_description(tmp_path):
    train = '"3","Wall St. Bears","Short-sellers are seeing green."\n"1","Title","Desc"\n'
    ds = read_dataset(make_dataset(tmp_path, train, test='"2","T","D"\n'))
    assert ds.train.texts == ("Wall St. Bears Short-sellers are seeing green.", "Title Desc")
    assert ds.train.labels == (2, 0)
    assert ds.test.labels == (1,)


def test_three_column_header_is_skipped(tmp_path):
    ds = read_dataset(make_dataset(tmp_path, "label,title,description\n1,t,d\n"))
    assert ds.train.texts == ("t d",)


def test_bom_crlf_blank_lines_and_multiline_fields_load(tmp_path):
    train = b'\xef\xbb\xbflabel,text\r\n1,"two\r\nlines"\r\n\r\n2,x\r\n'
    ds = read_dataset(make_dataset(tmp_path, train))
    assert ds.train.texts == ("two\r\nlines", "x")


def test_embedded_dataset_loads():
    ds = read_dataset(default_dataset_dir())
    assert ds.name == "ag_news"
    assert (len(ds.train), len(ds.test)) == (10_601, 7_600)
    assert ds.num_classes == 4
    assert set(ds.test.labels) == {0, 1, 2, 3}


# --- bad input: one line, file and line named ------------------------------------------


@pytest.mark.parametrize(
    "train, line, words",
    [
        ("label,text\n1,ok\n2,a,b\n", 3, "columns"),  # wrong column count
        ("1,ok\n2\n", 2, "columns"),
        ("1,a,b,c\n", 1, "columns"),  # first row neither 2 nor 3 columns
        ("label,text\n1,ok\nx,bad\n", 3, "not an integer"),
        ("label,text\n1,ok\n1.5,bad\n", 3, "not an integer"),
        ("label,text\n5,bad\n", 2, "outside 1..4"),
        ("label,text\n0,bad\n", 2, "outside 1..4"),
        ("label,text\n1,ok\n2,   \n", 3, "empty text"),
        ('"1","",""\n', 1, "empty text"),
        ('label,text\n1,"multi\nline"\n9,bad\n', 4, "outside"),  # start line after a multi-line record
        ('label,text\n1,"multi\nline\n', 2, "malformed"),  # unterminated quote: the record's start
        ('label,text\n1,"a"b\n', 2, "malformed"),
        ("1,ok\n\n\n2,a,b\n", 4, "columns"),  # blank lines still count
        ("lbl,txt\n1,ok\n", 1, "first row 'lbl,txt' is neither the header label,text nor a row whose label"),
        ("x,bad\n1,ok\n", 1, "neither the header label,text"),  # no header: a first label that is no integer
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, train, line, words):
    error = raises_at(make_dataset(tmp_path, train), "train.csv", line)
    assert words in str(error)


def test_non_utf8_names_the_line(tmp_path):
    raises_at(make_dataset(tmp_path, b"label,text\n1,ok\n2,\xff\xfe\n"), "train.csv", 3)


def test_empty_and_header_only_files_concern_the_whole_file(tmp_path):
    raises_at(make_dataset(tmp_path / "a", ""), "train.csv", None)
    raises_at(make_dataset(tmp_path / "b", "\n\n"), "train.csv", None)
    raises_at(make_dataset(tmp_path / "c", "label,text\n"), "train.csv", None)


def test_bad_test_split_is_reported_too(tmp_path):
    raises_at(make_dataset(tmp_path, "1,ok\n", test="1,ok\n1,ok,extra\n"), "test.csv", 2)


def test_missing_files_and_directory(tmp_path):
    raises_at(make_dataset(tmp_path / "a", "1,ok\n", test=None), "test.csv", None)
    raises_at(make_dataset(tmp_path / "b", None), "train.csv", None)
    raises_at(make_dataset(tmp_path / "c", "1,ok\n", classes=None), "classes.txt", None)
    with pytest.raises(DataError, match="no such directory"):
        read_dataset(tmp_path / "nowhere")
    with pytest.raises(DataError, match="not a directory"):
        read_dataset(tmp_path / "a" / "train.csv")
    with pytest.raises(TypeError):
        read_dataset(3)


@pytest.mark.parametrize(
    "classes, line",
    [("", None), ("\n\n", None), ("A\n", None), ("A\nB\nA\n", 3), ("A\n\nB\n", 2), (b"A\n\xffB\n", 2)],
)
def test_bad_classes_file(tmp_path, classes, line):
    raises_at(make_dataset(tmp_path, "1,ok\n", classes=classes), "classes.txt", line)


def test_labels_are_checked_against_the_class_count(tmp_path):
    error = raises_at(make_dataset(tmp_path, "3,x\n", classes="A\nB\n"), "train.csv", 1)
    assert "outside 1..2" in str(error)


# --- the dataclasses ---------------------------------------------------------------------


def split(n: int) -> TextSplit:
    texts, labels = tuple(f"t{i}" for i in range(n)), tuple(i % 3 for i in range(n))
    return TextSplit(texts=texts, labels=labels, path=Path("x.csv"))


def test_subset_is_seeded_and_keeps_file_order():
    s = split(50)
    a, b, c = s.subset(10, seed=1), s.subset(10, seed=1), s.subset(10, seed=2)
    assert a == b and a != c
    assert len(a) == 10 and a.path == s.path
    positions = [s.texts.index(t) for t in a.texts]
    assert positions == sorted(positions)
    assert all(s.labels[p] == y for p, y in zip(positions, a.labels))
    assert s.subset(None, seed=0) is s and s.subset(50, seed=0) is s and s.subset(99, seed=0) is s


@pytest.mark.parametrize("n, seed", [(0, 0), (-1, 0), (2.5, 0), (True, 0), (3, None)])
def test_subset_rejects_bad_arguments(n, seed):
    with pytest.raises(ValueError):
        split(5).subset(n, seed)


@pytest.mark.parametrize(
    "texts, labels",
    [(("a", "b"), (0,)), (("a",), (-1,)), (("a",), (0.0,)), ((1,), (0,))],
)
def test_text_split_validates_itself(texts, labels):
    with pytest.raises(ValueError):
        TextSplit(texts=texts, labels=labels, path=Path("x.csv"))


@pytest.mark.parametrize(
    "name, classes",
    [
        ("", ("a", "b", "c")),  # no name
        ("d", ("a",)),  # one class
        ("d", ("a", "b", "a")),  # duplicate class
        ("d", ("a", "b")),  # the splits' labels reach 2
    ],
)
def test_dataset_validates_itself(name, classes):
    train = split(5)  # labels 0, 1, 2
    with pytest.raises(ValueError):
        Dataset(name=name, classes=classes, train=train, test=train)


def test_dataset_accepts_a_valid_spec():
    ds = Dataset(name="d", classes=["a", "b", "c"], train=split(5), test=split(2))
    assert ds.classes == ("a", "b", "c") and ds.num_classes == 3


def test_data_error_is_one_line():
    error = DataError(Path("f.csv"), "bad\nthing", line=7)
    assert str(error) == "f.csv:7: bad thing"
    assert isinstance(error, ValueError)
    assert str(DataError("f.csv", "empty")) == "f.csv: empty"


def test_a_text_longer_than_the_csv_module_default_is_read(tmp_path):
    long = "word " * 40_000  # 200,000 characters, over csv's default 131,072
    (tmp_path / "train.csv").write_text(f'label,text\n1,"{long}"\n2,short\n', encoding="utf-8")
    (tmp_path / "test.csv").write_text("label,text\n1,a\n2,b\n", encoding="utf-8")
    (tmp_path / "classes.txt").write_text("x\ny\n", encoding="utf-8")
    dataset = read_dataset(tmp_path)
    assert len(dataset.train.texts[0]) >= 199_999 and dataset.train.texts[1] == "short"
