"""Using a trained run: ``dht predict`` and ``dht.load(...).predict`` give what ``dht evaluate`` gives for the
same rows (DHT's arms and FastBERT's exits included), in input order, from CSV, text files, standard input
and --text; bad input stops with one line naming the file and line, exit 2, and writes nothing."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dht
from dht.cli import main
from dht.training.config import RunConfig, TrainConfig
from dht.training.evaluation import predict_split
from dht.training.loop import load_run, train
from dht.training.operating import budget_search

SMALL = TrainConfig(epochs=1, batch_size=16, max_train=160, max_test=48, seed=3, eval_batch_size=16)
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny BL1, F-DHT and FastBERT (on that BL1) runs."""
    root = tmp_path_factory.mktemp("predict")
    train(RunConfig(backbone="tiny", train=SMALL), root / "full", progress=False)
    train(RunConfig(method="dht", backbone="tiny", train=SMALL, options={"config": "f-dht"}), root / "dht",
          progress=False)
    train(RunConfig(method="fastbert", backbone="tiny", train=SMALL, options={"teacher": str(root / "full"),
                                                                               "speed": 0.5}),
          root / "fastbert", progress=False)
    return root


def knob_flags(run: Path) -> list[str]:
    """For a run with a knob, the flag setting it halfway between its cheapest and dearest FLOP ratios, so
    that test samples take different routes (a tiny FastBERT's exits are all nearly uncertain)."""
    prepared = load_run(run)
    if prepared.method.knob is None:
        return []
    low, high = budget_search(prepared, 1.0, tolerance=0.0, steps=0)["reachable"]
    found = budget_search(prepared, (low + high) / 2)
    return ["--" + found["option"].replace("_", "-"), repr(found["value"])]


def evaluated(run: Path, flags: list[str]) -> tuple[list[str], list[str], list[str], list[float]]:
    """The run's test texts and what evaluation predicts for them (with the inference ``flags``): class
    names, routes, FLOP ratios."""
    overrides = {flags[0][2:].replace("-", "_"): float(flags[1])} if flags else None
    prepared = load_run(run, overrides=overrides)
    result = predict_split(prepared.method, prepared.test.ids, prepared.test.labels,
                           prepared.run.train.eval_batch_size, prepared.pad_id)
    texts = list(prepared.dataset.test.subset(SMALL.max_test, seed=SMALL.seed).texts)
    classes = prepared.dataset.classes
    ratios = (result.flops / result.full_flops).tolist()
    return texts, [classes[i] for i in result.predictions.tolist()], result.routes, ratios


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", ["full", "dht", "fastbert"])
def test_predict_gives_what_evaluate_gives_for_the_same_rows(runs, name, tmp_path, monkeypatch, capsys):
    flags = knob_flags(runs / name) if name == "fastbert" else []
    texts, labels, routes, ratios = evaluated(runs / name, flags)
    if name != "full":
        assert len(set(routes)) > 1  # the comparison covers samples on different paths
    # A plain text file (one per line: a newline inside a text is whitespace to the tokenizer).
    lines = tmp_path / "texts.txt"
    lines.write_text("".join(" ".join(t.split()) + "\n" for t in texts), encoding="utf-8")
    assert main(["predict", str(runs / name), "--input", str(lines), "--output", str(tmp_path / "a.jsonl"),
                 "--quiet", *flags]) == 0
    rows = read_jsonl(tmp_path / "a.jsonl")
    assert [r["label"] for r in rows] == labels and [r["route"] for r in rows] == routes
    assert [r["flop_ratio"] for r in rows] == pytest.approx(ratios, abs=1e-6)
    assert all(max(r["probabilities"], key=r["probabilities"].get) == r["label"] for r in rows)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)
    # A CSV with a text column among others, its texts holding commas, quotes and newlines.
    table = tmp_path / "texts.csv"
    with table.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "Text", "label"])
        writer.writerows([i, text, "?"] for i, text in enumerate(texts))
    assert main(["predict", str(runs / name), "--input", str(table), "--output", str(tmp_path / "b.csv"),
                 "--quiet", *flags]) == 0
    out = list(csv.DictReader((tmp_path / "b.csv").open(encoding="utf-8")))
    assert [r["text"] for r in out] == texts and [r["label"] for r in out] == labels
    assert [r["route"] for r in out] == routes
    # Standard input, and the Python API, reversed: the order of the input is kept.
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(" ".join(t.split()) + "\n" for t in texts[::-1])))
    assert main(["predict", str(runs / name), "--quiet", *flags]) == 0
    assert [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()] == labels[::-1]
    options = {flags[0][2:].replace("-", "_"): float(flags[1])} if flags else {}
    assert [p.label for p in dht.load(runs / name, **options).predict(texts)] == labels


def test_the_dataset_split_itself_and_text_flags(runs, capsys):
    """The run's own test.csv (label,title,description, no header) is read as training reads it."""
    prepared = load_run(runs / "full")
    assert main(["predict", str(runs / "full"), "--input", str(prepared.dataset.test.path), "--quiet",
                 "--batch-size", "16"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(prepared.dataset.test)  # every row, not the run's --max-test subset
    assert main(["predict", str(runs / "full"), "--text", "first one", "--text", "second, two"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["first one", "second, two"]


def test_inference_options_change_predict(runs, tmp_path, capsys):
    assert main(["predict", str(runs / "fastbert"), "--text", "a b c", "--speed", "1.0"]) == 0
    cheap = json.loads(capsys.readouterr().out)
    assert cheap["route"] == "1L"  # speed 1: every sample leaves at the first exit
    with pytest.raises(SystemExit) as stop:  # a training option is not an inference flag
        main(["predict", str(runs / "fastbert"), "--text", "a b c", "--temperature", "2"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "unrecognized arguments: --temperature" in err
    assert err.count("\n") == 1 and err.endswith("--help)\n")  # one line, not argparse's usage


@pytest.mark.parametrize("name, content, message", [
    ("blank.txt", "one\n\nthree\n", r"blank.txt:2: empty line"),
    ("bad.csv", "text,label\nfine,1\n\"unclosed,1\n", r"bad.csv:3: malformed CSV"),
    ("short.csv", "id,text\n1,fine\n2\n", r"short.csv:3: expected 2 columns"),
    ("empty.csv", "id,text\n1,   \n", r"empty.csv:2: empty text"),
    ("latin.txt", b"caf\xe9\n", r"latin.txt:1: not valid UTF-8"),
    ("split.csv", "9,a text\n", r"split.csv:1: label 9 is outside 1..4"),
    ("body.csv", "label,body\n1,a text\n", r"body.csv:1: no 'text' column in the header 'label,body'"),
])
def test_bad_input_is_one_line_naming_file_and_line_and_writes_nothing(runs, tmp_path, capsys, name, content,
                                                                        message):
    source = tmp_path / name
    source.write_bytes(content if isinstance(content, bytes) else content.encode())
    output = tmp_path / "out" / "predictions.jsonl"
    assert main(["predict", str(runs / "full"), "--input", str(source), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert not output.exists() and not output.parent.exists()


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "--text", "x"]) == 2
    assert "not a run folder (no run.json)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a finished run"):
        (tmp_path / "run.json").write_text("{}")
        dht.load(tmp_path)


def test_dht_train_takes_a_typed_config_and_returns_the_run(tmp_path):
    run = dht.RunConfig(method="full", backbone="tiny", train=dht.TrainConfig(epochs=1, max_train=32, max_test=16))
    clf = dht.train(run, tmp_path / "run", progress=False)
    assert clf.method == "full" and clf.metrics["test"]["samples"] == 16
    tensors = clf.predict_tensors(["a", "b c d"])
    assert tensors.probabilities.shape == (2, len(clf.classes))
    with pytest.raises(ValueError, match="--teacher is required"):
        dht.train(dht.RunConfig(method="distil", backbone="tiny"), tmp_path / "other", progress=False)
    assert not (tmp_path / "other").exists()


def test_the_readme_python_example_runs(runs, tmp_path, monkeypatch, capsys):
    """The README's example, as written, against a run in the folder it names (a tiny one here)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "the README has a Python example"
    example = blocks[0]
    folder = re.search(r'dht\.load\("([^"]+)"\)', example).group(1)
    (tmp_path / folder).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / folder).symlink_to(runs / "dht")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed and all(line.split()[0] in ("World", "Sports", "Business", "Sci/Tech") for line in printed)


def test_an_exported_run_loads_in_transformers_with_our_hidden_states(runs, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    export = tmp_path / "export"
    assert main(["export", str(runs / "full"), str(export)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "dht_head.safetensors",
            "run.json"} <= {p.name for p in export.iterdir()}
    theirs = transformers.AutoModel.from_pretrained(str(export), attn_implementation="sdpa").eval()
    ours = dht.load(runs / "full", device="cpu")._saved.model.eval()
    ids = torch.randint(1000, 30000, (3, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.arange(20)[None, :] < torch.tensor([20, 13, 4])[:, None]
    ids = ids.masked_fill(~mask, 0)
    with torch.no_grad():
        h = ours.run_plan(ours.embed(ids), mask, ours.full_plan())
        reference = theirs(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert (h - reference)[mask].abs().max() <= 1e-4
    assert torch.equal(load_file(str(export / "dht_head.safetensors"))["classifier.weight"], ours.classifier.weight)
    assert main(["export", str(runs / "fastbert"), str(tmp_path / "fastbert")]) == 0
    head = load_file(str(tmp_path / "fastbert" / "dht_head.safetensors"))
    assert any(key.startswith("branches.") for key in head)  # FastBERT's exit classifiers travel too
    assert main(["export", str(runs / "fastbert"), str(export)]) == 2  # never over an existing export
    assert "not an empty folder" in capsys.readouterr().err


def test_a_students_export_holds_its_own_layers_and_predicts_as_the_run(runs, tmp_path):
    """A BL2 student of 2 layers runs its teacher's layers 0 and 2: the export is that 2-layer encoder, and
    mean pooling of transformers' last hidden states through the exported head gives the run's predictions."""
    transformers = pytest.importorskip("transformers")
    student = tmp_path / "student"
    train(RunConfig(method="distil", backbone="tiny", train=SMALL,
                    options={"teacher": str(runs / "full"), "layers": 2}), student, progress=False)
    assert main(["export", str(student), str(tmp_path / "export")]) == 0
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    theirs = transformers.AutoModel.from_pretrained(str(tmp_path / "export"), attn_implementation="sdpa").eval()
    head = load_file(str(tmp_path / "export" / "dht_head.safetensors"))
    texts = ["stocks rallied after the fed held rates", "the team won the final", "a new chip"]
    classifier = dht.load(student, device="cpu")
    rows = classifier._saved.tokenizer.encode(texts)
    longest = max(map(len, rows))
    ids = torch.tensor([row + [0] * (longest - len(row)) for row in rows])
    mask = torch.arange(longest)[None, :] < torch.tensor([len(row) for row in rows])[:, None]
    with torch.no_grad():
        hidden = theirs(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        probabilities = torch.softmax(pooled @ head["classifier.weight"].T + head["classifier.bias"], -1)
    ours = [[row.probabilities[name] for name in classifier.classes] for row in classifier.predict(texts)]
    assert torch.allclose(probabilities, torch.tensor(ours), atol=1e-4)


def test_a_run_made_before_run_json_still_loads(runs, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(runs / "full", old)
    (old / "run.json").rename(old / "config.json")  # how runs were written before
    assert [p.label for p in dht.load(old).predict(["one", "two"])] == \
        [p.label for p in dht.load(runs / "full").predict(["one", "two"])]


def test_evaluate_and_predict_work_from_a_fresh_process(runs, tmp_path):
    """The CLI registers the methods itself (the suite's conftest imports them for every in-process test)."""
    for argv in (["evaluate", str(runs / "dht"), "--quiet", "--output", str(tmp_path / "e.json")],
                 ["predict", str(runs / "fastbert"), "--text", "a text"]):
        done = subprocess.run([sys.executable, "-m", "dht", *argv], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr


def test_unicode_line_separators_stay_inside_a_text_and_empty_texts_are_refused(runs, tmp_path, capsys):
    source = tmp_path / "texts.txt"
    source.write_text("one\u2028still one\x85and one\r\ntwo\n", encoding="utf-8")
    assert main(["predict", str(runs / "full"), "--input", str(source), "--quiet"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.split("\n") if line]  # JSON lines end in \n
    assert [r["text"] for r in rows] == ["one\u2028still one\x85and one", "two"]
    assert main(["predict", str(runs / "full"), "--text", "fine", "--text", " "]) == 2
    assert "--text: an empty text" in capsys.readouterr().err


def test_an_export_or_a_model_folder_is_not_taken_for_a_run(runs, tmp_path, capsys):
    assert main(["export", str(runs / "full"), str(tmp_path / "export")]) == 0
    with pytest.raises(ValueError, match="an export .dht export. for transformers, not a run folder"):
        dht.load(tmp_path / "export")
    (tmp_path / "hf").mkdir()
    for name in ("tokenizer.json", "model.safetensors"):
        shutil.copy(tmp_path / "export" / name, tmp_path / "hf" / name)
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="not a dht run's settings"):
        dht.load(tmp_path / "hf")
