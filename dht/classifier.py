"""Use a trained run: classify texts from Python, the shell (``dht predict``) and HTTP (``dht serve``).

``Classifier.load(RUN)`` rebuilds a finished run without its dataset; ``predict(texts)`` runs the
method's own inference (DHT's arms, heads and depth queues; FastBERT's exits), so a text gets the class
``dht evaluate`` would give it in the same batch, with the route it took and what that cost.

Dimension legend: N texts, C classes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from safetensors.torch import save_file

import dht.methods  # noqa: F401  (registers the built-in methods)
from dht.model.backbones import hf_config, hf_state_dict, keep_layers
from dht.provenance import device_name, umask
from dht.training.config import read_run_dataset, run_file
from dht.training.evaluation import SplitPrediction, predict_split
from dht.training.setup import SavedRun, open_run

FORMATS = ("jsonl", "csv")


@dataclass(frozen=True)
class TextPrediction:
    """One text's prediction: its class, the class probabilities, the route it took and its cost."""

    label: str  # predicted class name
    probabilities: dict[str, float]  # class name -> softmax probability (they sum to 1)
    route: str  # the path taken: a DHT arm ('4L12H'), a FastBERT exit ('3L'); '' for one-path methods
    flop_ratio: float  # FLOPs of the network that ran / the full model's on the same tokens (paper-style)
    flop_ratio_all_in: float  # the same with overheads (DHT's probe and bandits) counted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Classifier:
    """A trained run, ready to classify texts.

    Attributes: ``path`` (the run folder), ``method`` (its name), ``options`` (its method options, as a
    JSON object), ``classes`` (class names; label k is ``classes[k]``), ``device``.
    """

    def __init__(self, saved: SavedRun, path: Path, batch_size: int | None = None) -> None:
        self._saved = saved
        self.path = path
        self.method = saved.run.method
        self.options = saved.method.options.to_dict()
        self.classes = saved.classes
        self.device = saved.method.device
        self.batch_size = batch_size or saved.run.train.eval_batch_size

    @classmethod
    def load(cls, run_dir: str | Path, device: str | None = None, batch_size: int | None = None,
             **inference_options: Any) -> Classifier:
        """Load a finished run folder on ``device`` ("auto": the GPU when torch sees one; "cpu";
        "cuda[:N]"); ``inference_options`` change the method's inference options (FastBERT's ``speed``,
        DHT's ``cost_weight``); ``batch_size`` texts per batch (default: the run's evaluation batch).
        Raises ValueError naming the folder or option when it cannot be loaded as asked."""
        path = Path(run_dir)
        if batch_size is not None and (type(batch_size) is not int or batch_size < 1):
            raise ValueError(f"batch size must be a positive int, got {batch_size!r}")
        return cls(open_run(path, inference_options or None, device), path, batch_size)

    def predict_tensors(self, texts: Sequence[str], progress: bool = False) -> SplitPrediction:
        """Predict ``texts`` and return the tensors: ``predictions`` (N,) class indices, ``probabilities``
        (N, C), per-text ``flops``, ``full_flops`` and ``all_in`` (N,) FLOPs, ``routes`` and ``seconds``
        (wall time). Texts are truncated to the run's ``max_length`` tokens. Raises TypeError unless
        ``texts`` is a sequence of str."""
        ids = self._saved.tokenizer.encode(texts)
        return predict_split(self._saved.method, ids, [0] * len(ids), self.batch_size,
                             self._saved.tokenizer.pad_id, progress=progress, desc="predict")

    def predict(self, texts: Sequence[str], progress: bool = False) -> list[TextPrediction]:
        """One ``TextPrediction`` per text, in the order given (see ``predict_tensors``)."""
        if not texts:
            return []
        result = self.predict_tensors(texts, progress)
        rows = []
        for i in range(len(texts)):
            probabilities = result.probabilities[i].tolist()
            full = float(result.full_flops[i])
            rows.append(TextPrediction(self.classes[int(result.predictions[i])],
                                       {name: round(p, 6) for name, p in zip(self.classes, probabilities)},
                                       result.routes[i], round(float(result.flops[i]) / full, 6),
                                       round(float(result.all_in[i]) / full, 6)))
        return rows

    @property
    def metrics(self) -> dict[str, Any] | None:
        """The run's metrics.json (training and test scores, FLOP ratios, seconds), None when absent."""
        path = self.path / "metrics.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def info(self) -> dict[str, Any]:
        """The run's method, options, classes, backbone and device, and its test scores and FLOP ratios
        from training (metrics.json) when present."""
        run = self._saved.run
        info: dict[str, Any] = {"run": str(self.path), "method": self.method, "options": self.options,
                                "classes": list(self.classes), "backbone": run.backbone,
                                "max_length": run.train.max_length, "device": device_name(self.device)}
        if self.metrics is not None:
            test = self.metrics["test"]
            info["test"] = {key: test[key] for key in ("accuracy", "f1_macro", "flop_ratio", "flop_ratio_all_in",
                                                       "samples") if key in test}
        return info


def export_run(run_dir: Path, directory: Path) -> list[str]:
    """Write a finished run as a Hugging Face BERT folder: ``config.json`` (BertConfig) and
    ``model.safetensors`` (BertModel names) that ``transformers.AutoModel.from_pretrained(directory)``
    loads as the run's encoder at the full plan (a BL2 student's own layers alone), ``tokenizer.json``, and
    beside them what transformers does not know: ``dht_head.safetensors`` (the classifier and any exit
    classifiers, our names), ``run.json`` (the run's settings and class names) and the method's state
    (``method.json``/``method.safetensors``). The run's predictions are the classifier on the mean of the
    last hidden states over real tokens (or the first token's, for ``--pooling cls``). The folder is written
    whole or not at all; an existing non-empty ``directory`` is refused (ValueError). Returns the file names
    written."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ValueError(f"{directory}: exists and is not an empty folder; choose a new export folder")
    saved = open_run(Path(run_dir), device="cpu")
    model = saved.model
    layers = saved.method.export_layers()
    if layers != tuple(range(model.config.num_layers)):  # the student's layers, not its teacher's encoder
        model = keep_layers(model, layers)
    if model.config.acm_learners:
        raise ValueError(f"{run_dir}: an ACM run's FFNs are learners and gates, which transformers' BertModel has "
                         "no place for; use the run folder itself (dht.load, dht predict, dht serve)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))  # same file system
    os.chmod(staging, 0o777 & ~umask())  # mkdtemp makes it private; an export is an ordinary folder
    try:
        (staging / "config.json").write_text(json.dumps(hf_config(model.config), indent=1), encoding="utf-8")
        save_file(hf_state_dict(model), str(staging / "model.safetensors"), metadata={"format": "pt"})
        head = {key: value.detach().contiguous() for key, value in model.state_dict().items()
                if key.startswith(("classifier.", "branches."))}
        save_file(head, str(staging / "dht_head.safetensors"))
        shutil.copy(saved.tokenizer_json, staging / "tokenizer.json")
        shutil.copy(run_file(run_dir), staging / "run.json")
        for name in ("method.json", "method.safetensors"):
            if (Path(run_dir) / name).is_file():
                shutil.copy(Path(run_dir) / name, staging / name)
        for path in staging.iterdir():
            os.chmod(path, 0o666 & ~umask())
        if directory.exists():
            directory.rmdir()
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(path.name for path in directory.iterdir())


def run_classes(run_dir: Path) -> tuple[str, ...]:
    """The class names a finished run predicts, read from its run.json alone (no model loaded); a
    ValueError naming the folder when it is not a run."""
    return read_run_dataset(run_dir).classes


def format_predictions(texts: Sequence[str], rows: Sequence[TextPrediction], classes: Sequence[str],
                       fmt: str) -> str:
    """``dht predict``'s output: JSON lines (``{"text", "label", "probabilities", "route", "flop_ratio",
    "flop_ratio_all_in"}``) or CSV (``text,label,p_<class>...,route,flop_ratio,flop_ratio_all_in``)."""
    if fmt == "jsonl":
        return "".join(json.dumps({"text": text, **row.to_dict()}, ensure_ascii=False) + "\n"
                       for text, row in zip(texts, rows))
    if fmt != "csv":
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text", "label", *(f"p_{name}" for name in classes), "route", "flop_ratio",
                     "flop_ratio_all_in"])
    for text, row in zip(texts, rows):
        writer.writerow([text, row.label, *(row.probabilities[name] for name in classes), row.route,
                         f"{row.flop_ratio:.6f}", f"{row.flop_ratio_all_in:.6f}"])
    return out.getvalue()
