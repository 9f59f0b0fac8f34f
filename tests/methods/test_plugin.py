"""Adding a method: a toy method defined here alone, registered, trained and evaluated through the CLI.

The toy method is "the first k layers for every sample" (k an option), which is enough to show that its
options become flags, that its FLOPs are counted by the shared counter, that its options are saved and
read back, and that the bench picks it up from the registry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

import dht.benchmark as bench
from dht.cli import build_parser, main
from dht.data import Batch
from dht.model import ExecutionPlan
from dht.training.hooks import METHODS, BenchRun, Method, register
from dht.training.options import MethodOptions, option

SMALL = ["--backbone", "tiny", "--max-train", "48", "--max-test", "24", "--epochs", "1", "--batch-size", "16",
         "--quiet"]


@dataclass(frozen=True)
class ShallowOptions(MethodOptions):
    depth: int = option(2, "layers every sample runs (>= 1)")

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"--depth must be >= 1, got {self.depth}")


class Shallow(Method):
    """The first ``depth`` layers with every head, for every sample, in training and at inference."""

    name = "shallow"
    Options = ShallowOptions

    def plans(self, batch: Batch) -> ExecutionPlan:
        return ExecutionPlan.first(self.options.depth, self.model.config.num_heads)

    @classmethod
    def bench_runs(cls, num_layers: int) -> list[BenchRun]:
        return [BenchRun(f"shallow-{d}", {"depth": d}) for d in (1, num_layers // 2)]


@pytest.fixture
def shallow():
    """Register the toy method for one test, and take it out again."""
    register(Shallow)
    yield Shallow
    del METHODS["shallow"]


def test_a_toy_method_trains_and_evaluates_through_the_cli(shallow, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "shallow", "--depth", "1", *SMALL, "--output", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "shallow" and metrics["options"] == {"depth": 1}
    # The tiny backbone has 4 layers: one of them costs about a quarter of the full model's FLOPs.
    assert metrics["test"]["flop_ratio"] == pytest.approx(0.25, abs=0.02)
    assert metrics["train"]["flop_ratio"] == pytest.approx(0.25, abs=0.02)
    assert json.loads((run / "run.json").read_text())["run"]["options"] == {"depth": 1}
    assert main(["evaluate", str(run), "--quiet"]) == 0
    again = json.loads((run / "evaluation.json").read_text())["test"]
    assert again["f1_macro"] == metrics["test"]["f1_macro"] and again["flop_ratio"] == metrics["test"]["flop_ratio"]


def test_a_toy_method_validates_its_options_as_flags(shallow, tmp_path, capsys):
    assert main(["train", "--method", "shallow", "--depth", "0", *SMALL, "--output", str(tmp_path / "a")]) == 2
    assert "--depth must be >= 1" in capsys.readouterr().err
    assert main(["train", "--method", "full", "--depth", "2", *SMALL, "--output", str(tmp_path / "b")]) == 2
    assert "--method full does not take --depth" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_bench_asks_the_registry_for_its_runs(shallow, tmp_path):
    rows = bench.entries(4, tmp_path / "runs" / "full")
    names = [entry.name for entry in rows]
    assert names[0] == "full" and names[-2:] == ["shallow-1", "shallow-2"]
    assert [entry.options for entry in rows if entry.method == "shallow"] == [{"depth": 1}, {"depth": 2}]
    teacher = {entry.options.get("teacher") for entry in rows if entry.method in ("distil", "fastbert")}
    assert teacher == {str(tmp_path / "runs" / "full")}  # methods with a teacher get the bench's BL1 run


def test_registering_needs_a_name_of_its_own():
    class Nameless(Method):
        pass

    with pytest.raises(ValueError, match="needs a name"):
        register(Nameless)

    class Impostor(Method):
        name = "full"

    with pytest.raises(ValueError, match="needs a name of its own"):
        register(Impostor)


def test_the_parser_lists_every_registered_method(shallow):
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    method = next(action for action in train._actions if action.dest == "method")
    assert method.choices == list(METHODS)  # every registered method, in registry order
    assert method.choices[:4] == ["full", "distil", "fastbert", "dht"] and method.choices[-1] == "shallow"


def test_an_option_a_flag_cannot_carry_is_refused_at_registration():
    @dataclass(frozen=True)
    class ListOptions(MethodOptions):
        depths: list = option((), "not a flag's type")

    @dataclass(frozen=True)
    class SeedOptions(MethodOptions):
        seed: int = option(0, "the run's own --seed")

    @dataclass(frozen=True)
    class SpeedOptions(MethodOptions):
        speed: str = option("fast", "FastBERT's --speed is a float")

    for options in (ListOptions, SeedOptions, SpeedOptions):
        kind = type("Odd", (Method,), {"name": "odd", "Options": options})
        with pytest.raises(TypeError, match="option"):
            register(kind)
        assert "odd" not in METHODS
