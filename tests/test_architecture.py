"""The layers of the package: nothing imports a layer above it, and the subpackages form no cycle.

The contracts live in pyproject.toml ([tool.importlinter]) and are checked by import-linter, which
``make test`` also runs; these tests check that they hold and that they would catch a violation.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_import_contracts_hold():
    done = subprocess.run([str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_the_training_loop_loads_no_method():
    code = ("import sys, dht.training, dht.training.loop, dht.training.setup; "
            "print(sorted(m for m in sys.modules if m.startswith(('dht.methods', 'dht.search', 'dht.benchmark'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def layers_graph() -> tuple[grimp.ImportGraph, list]:
    layers = next(c for c in contracts() if c["type"] == "layers")["layers"]
    parsed = [grimp.Layer(*[f"dht.{name.strip()}" for name in layer.replace(":", "|").split("|")],
                          independent="|" in layer) for layer in layers]
    return grimp.build_graph("dht"), parsed


def test_the_layer_contract_catches_an_upward_import():
    graph, layers = layers_graph()
    assert not graph.find_illegal_dependencies_for_layers(layers=layers)
    graph.add_import(importer="dht.training.loop", imported="dht.methods.dht")  # the loop importing a method
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers)
    assert {(d.importer, d.imported) for d in illegal} == {("dht.training", "dht.methods")}


def test_search_and_training_stay_independent():
    graph, layers = layers_graph()
    graph.add_import(importer="dht.search.arms", imported="dht.training.config")
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers)
    assert {(d.importer, d.imported) for d in illegal} == {("dht.search", "dht.training")}
