"""Command-line flags built from the methods' option dataclasses: a small adapter over argparse.

Each option a registered method declares (``dht.training.options.option``) becomes one flag,
``--name-with-dashes``, with its type, and a help line listing the methods that take it and their
defaults. Flags default to "not given", so after parsing we know exactly which were typed, and a flag
the chosen method does not take is an error rather than silently ignored.

Why not a library that builds a CLI from dataclasses (tyro, simple-parsing): they map one dataclass
to one command or sub-command, so per-method flags would become ``dht train distil --teacher ...``
sub-commands, changing the interface users and our docs have; options shared by methods
(``--teacher`` for distil and fastbert) would be declared twice. This adapter is ~70 lines over the
argparse the CLI already uses.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from dht.training.hooks import Method
from dht.training.options import OptionField

PREFIX = "option_"  # argparse dest of a method option's flag


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _converter(field: OptionField) -> Callable[[str], Any]:
    return {bool: _parse_bool, int: int, float: float, str: str}[field.base_type]


def add_method_flags(parser: argparse.ArgumentParser, methods: dict[str, type[Method]],
                     inference_only: bool = False) -> None:
    """Add one flag per option name across ``methods`` (only inference options if ``inference_only``);
    ``register`` has checked that the types are ones a flag carries and that shared names agree."""
    owners: dict[str, list[tuple[str, OptionField]]] = {}
    for method in methods.values():
        for field in method.Options.fields():
            if field.inference or not inference_only:
                owners.setdefault(field.name, []).append((method.name, field))
    for name, declared in owners.items():
        first = declared[0][1]
        texts: dict[str, list[str]] = {}  # methods that declare the same help and default share one line
        for method, field in declared:
            default = "" if field.default in ("", None) else f" (default {field.default})"
            texts.setdefault(field.help + default, []).append(method)
        helps = "; ".join(f"{', '.join(methods)}: {text}" for text, methods in texts.items())
        parser.add_argument(first.flag, dest=PREFIX + name, type=_converter(first), default=argparse.SUPPRESS,
                            metavar=first.base_type.__name__.upper(), help=helps)


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method options typed on the command line, by option name."""
    return {key[len(PREFIX):]: value for key, value in vars(args).items() if key.startswith(PREFIX)}


def method_options(args: argparse.Namespace, method: type[Method]) -> dict[str, Any]:
    """All of ``method``'s options (given flags over defaults), validated, as a JSON object.

    Raises ValueError naming every given flag the method does not take, or the invalid value."""
    given = given_options(args)
    takes = {field.name for field in method.Options.fields()}
    foreign = [name for name in given if name not in takes]
    if foreign:
        flags = ", ".join("--" + name.replace("_", "-") for name in foreign)
        raise ValueError(f"--method {method.name} does not take {flags}")
    return method.Options(**given).to_dict()
