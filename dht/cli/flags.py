"""Command-line flags built from the methods' option dataclasses: a small adapter over argparse.

Each option a registered method declares (``dht.training.options.option``) becomes one flag,
``--name-with-dashes``, with its type, and a help line listing the methods that take it and their
defaults. Flags default to "not given", so after parsing we know exactly which were typed, and a flag
the chosen method does not take is an error rather than silently ignored.

The built-in methods' options are read from ``methods.json``, a manifest written from the registry
(``python -m dht.cli.manifest``; a test fails when it is stale), so that parsing and the checks that need no
model (a flag the method does not take, a missing or unfinished ``--teacher``) run without importing the
methods and torch: a bad command line fails in a fraction of a second instead of after ``import torch``
(about 2 s on a laptop). A method registered in the running process (a plug-in) is read from the
registry itself.

Why not a library that builds a CLI from dataclasses (tyro, simple-parsing): they map one dataclass
to one command or sub-command, so per-method flags would become ``dht train distil --teacher ...``
sub-commands, changing the interface users and our docs have; options shared by methods
(``--teacher`` for distil and fastbert) would be declared twice. This adapter is ~100 lines over the
argparse the CLI already uses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from dht.training.options import OptionField, check_declared_inputs

PREFIX = "option_"  # argparse dest of a method option's flag
MANIFEST = Path(__file__).with_name("methods.json")

MethodFields = dict[str, list[OptionField]]  # method name -> its declared options


def registry_fields(methods: dict[str, Any]) -> MethodFields:
    """The options of registered methods (``dht.training.hooks.METHODS``), by method name."""
    return {name: method.Options.fields() for name, method in methods.items()}


def method_fields() -> MethodFields:
    """Every method the CLI offers, with its options, without importing the methods: the built-in ones
    from the manifest, then any registered in this process (a plug-in, or all of them once imported)."""
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    fields = {name: [OptionField.from_json(f) for f in options] for name, options in manifest["methods"].items()}
    hooks = sys.modules.get("dht.training.hooks")  # loaded only by code that registers or runs methods
    if hooks is not None:
        fields.update(registry_fields(hooks.METHODS))
    return fields


def manifest_of(fields: MethodFields) -> dict[str, Any]:
    """The manifest's JSON object for ``fields``."""
    return {"written_by": "python -m dht.cli.manifest",
            "methods": {name: [f.to_json() for f in options] for name, options in fields.items()}}


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _converter(field: OptionField) -> Callable[[str], Any]:
    return {bool: _parse_bool, int: int, float: float, str: str}[field.base_type]


def parse_flag_value(field: OptionField, text: str) -> Any:
    """``text`` read as the command line reads ``field``'s flag (true/false, an int, a float or a string).
    Raises ValueError naming the flag for a text its type does not take."""
    try:
        return _converter(field)(text)
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise ValueError(f"{field.flag}: {error}") from None


def add_method_flags(parser: argparse.ArgumentParser, methods: MethodFields, inference_only: bool = False) -> None:
    """Add one flag per option name across ``methods`` (only inference options if ``inference_only``);
    ``register`` has checked that the types are ones a flag carries and that shared names agree."""
    owners: dict[str, list[tuple[str, OptionField]]] = {}
    for method, fields in methods.items():
        for field in fields:
            if field.inference or not inference_only:
                owners.setdefault(field.name, []).append((method, field))
    for name, declared in owners.items():
        first = declared[0][1]
        texts: dict[str, list[str]] = {}  # methods that declare the same help and default share one line
        for method, field in declared:
            # An inference flag left out keeps the run's own value: what it shows is the method's default.
            default = "" if field.default in ("", None) else \
                f" ({'method ' if inference_only else ''}default {field.default})"
            texts.setdefault(field.help + default, []).append(method)
        helps = "; ".join(f"{', '.join(methods)}: {text}" for text, methods in texts.items())
        parser.add_argument(first.flag, dest=PREFIX + name, type=_converter(first), default=argparse.SUPPRESS,
                            metavar=first.base_type.__name__.upper(), help=helps)


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method options typed on the command line, by option name."""
    return {key[len(PREFIX):]: value for key, value in vars(args).items() if key.startswith(PREFIX)}


def check_method_flags(args: argparse.Namespace, fields: list[OptionField], method: str) -> None:
    """The checks of a ``train`` command line that need no model: every given flag is one ``method`` takes,
    and the files its options name (``option(check=...)``) are there. Raises ValueError naming the flag."""
    given = given_options(args)
    takes = {field.name for field in fields}
    foreign = [name for name in given if name not in takes]
    if foreign:
        flags = ", ".join("--" + name.replace("_", "-") for name in foreign)
        raise ValueError(f"--method {method} does not take {flags}")
    check_declared_inputs(fields, given)


def method_options(args: argparse.Namespace, options: type) -> dict[str, Any]:
    """All of a method's options (given flags over the defaults of its ``Options`` class), validated by it,
    as a JSON object; a ValueError names an invalid value."""
    return options(**given_options(args)).to_dict()
