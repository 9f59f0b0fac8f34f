"""Golden runs: today's code reproduces what the code before ``dht/methods/`` (commit b2afe5b) computed.

Each file in tests/golden holds a ``dht train`` command line, the metrics it wrote (without seconds and
device), the loss of every step, and the SHA-256 of decisions.jsonl (every DHT arm, head set and reward
per sample and step). The tiny-backbone runs cover every method and DHT preset, P-DHT's switch
included, and run here in-process, single-threaded as they were made (as the whole suite runs); the two
MiniLM-L6 runs (BL1 and F-DHT on 320 training rows, about 25 s each) run in a subprocess with the 2
threads they were made with.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dht.cli import main

GOLDEN = Path(__file__).parent / "golden"
TINY = sorted(p.stem for p in GOLDEN.glob("tiny-*.json"))
MINILM = sorted(p.stem for p in GOLDEN.glob("minilm-*.json"))


def golden(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def command(name: str, output: Path, teacher: Path) -> list[str]:
    argv = [arg.replace("{teacher}", str(teacher)) for arg in golden(name)["argv"]]
    return [*argv, "--output", str(output)]


def outcome(run: Path) -> tuple[dict, list[float], str | None]:
    """What a golden file records of a run folder."""
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("options")  # stored in full since typed options; before, only the flags given
    for block in ("train", "test"):
        metrics[block].pop("seconds")
        metrics[block].pop("device")
    metrics["train"].pop("memory", None)  # measured on the machine, like seconds (added after the goldens)
    metrics["train"].pop("seconds_all_in", None)  # seconds again, with ACM's conversion (added after the goldens)
    metrics["train"].pop("trainable_params", None)  # added after the goldens; tests/methods/test_dlt.py pins it
    metrics["test"].pop("confusion_matrix", None)  # added after the goldens; tests/training/test_metrics.py
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
    decisions = run / "decisions.jsonl"
    digest = hashlib.sha256(decisions.read_bytes()).hexdigest() if decisions.exists() else None
    return metrics, losses, digest


def same_scores(ours, golden) -> bool:
    """Equal, except that a float may differ in its last float32 bits: accuracy and macro-F1 moved from our
    float32 formula to scikit-learn's float64 after the goldens were written; every other value is exact."""
    if isinstance(golden, dict):
        return isinstance(ours, dict) and ours.keys() == golden.keys() and all(
            same_scores(ours[k], golden[k]) for k in golden)
    if isinstance(golden, float) and isinstance(ours, float):
        return ours == pytest.approx(golden, rel=1e-6, abs=1e-9)
    return ours == golden


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The tiny BL1 run the golden students and FastBERT start from (itself a golden run)."""
    run = tmp_path_factory.mktemp("golden") / "tiny-full"
    assert main(command("tiny-full", run, run)) == 0
    return run


@pytest.mark.parametrize("name", TINY)
def test_tiny_runs_equal_their_golden_files(name, teacher, tmp_path):
    run = teacher if name == "tiny-full" else tmp_path / name
    if name != "tiny-full":
        assert main(command(name, run, teacher)) == 0
    metrics, losses, digest = outcome(run)
    expected = golden(name)
    assert same_scores(metrics, expected["metrics"])
    assert losses == expected["losses"]
    assert digest == expected["decisions_sha256"]


@pytest.mark.parametrize("name", MINILM)
def test_minilm_runs_equal_their_golden_files(name, tmp_path):
    expected = golden(name)
    env = {**os.environ, "OMP_NUM_THREADS": str(expected["threads"])}
    subprocess.run([sys.executable, "-m", "dht", *command(name, tmp_path / name, tmp_path)], env=env, check=True,
                   timeout=600, capture_output=True)
    metrics, losses, _ = outcome(tmp_path / name)
    assert same_scores(metrics, expected["metrics"])
    # Another thread count or CPU may move a float32 sum in its last bit; the metrics above are exact.
    assert torch.allclose(torch.tensor(losses), torch.tensor(expected["losses"]), rtol=0, atol=1e-5)
