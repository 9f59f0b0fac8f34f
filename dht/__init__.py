"""dht: Dynamic Hierarchical Transformer classifiers and their baselines.

The Python API (the command line, ``dht``, does the same)::

    import dht

    clf = dht.load("runs/x")                 # a finished run folder
    clf.predict(["a text", "another"])       # [TextPrediction(label=..., probabilities=..., route=..., ...)]

    run = dht.RunConfig(method="full", backbone="tiny", train=dht.TrainConfig(epochs=1, max_train=64))
    clf = dht.train(run, "runs/y")           # trains, evaluates, returns the run loaded for prediction

``import dht`` itself loads neither torch nor the methods; ``load`` and ``train`` do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dht.training.config import RunConfig, TrainConfig

if TYPE_CHECKING:
    from dht.classifier import Classifier

__version__ = "0.1.0"
__all__ = ["RunConfig", "TrainConfig", "load", "train", "__version__"]


def load(run_dir: str | Path, device: str | None = None, **inference_options: Any) -> Classifier:
    """A finished run folder, ready to classify texts (``dht.classifier.Classifier.load``): ``device`` is
    "auto" (the GPU when torch sees one), "cpu" or "cuda[:N]"; ``inference_options`` change the method's
    inference options (FastBERT's ``speed``, DHT's ``cost_weight``). Raises ValueError naming the folder."""
    from dht.classifier import Classifier

    return Classifier.load(run_dir, device=device, **inference_options)


def train(run: RunConfig, output: str | Path, resume: bool = False, device: str | None = None,
          progress: bool = True) -> Classifier:
    """Train ``run`` (a typed ``RunConfig``; its method options are checked first) into the folder
    ``output``, evaluate it on its test split, and return it loaded for prediction; its scores are in
    ``.metrics``. ``resume`` continues an interrupted run in ``output``. Raises ValueError (bad settings or
    data, naming the file or option) before anything is written."""
    import dht.methods  # noqa: F401  (registers the built-in methods)
    from dht.training.loop import train as train_run

    train_run(run, Path(output), resume=resume, progress=progress, device=device)
    return load(output, device=device)
