"""Typed method options: each method declares one frozen dataclass of the settings it takes.

A field is declared with ``option(default, help)``: its type annotation, its default (written once,
here) and a one-line help that the CLI shows. ``__post_init__`` validates the values, so an options
object that exists is a valid one. ``check=`` names a check of the file an option points to (a teacher
run), from ``INPUT_CHECKS``: these are declared rather than written in the method's module so that the
CLI can run them without importing the methods (and torch), and a bad path fails at once. Options
marked ``inference=True`` may also be changed when a saved run is evaluated (FastBERT's exit
threshold). A run folder stores them as a JSON object
(``run.json`` → ``run.options``) and ``from_dict`` reads them back, refusing unknown keys.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

from dht.training.config import run_file


def option(default: Any, doc: str, inference: bool = False, check: str = "") -> Any:
    """A method option's field: its default, a one-line help ``doc``, whether evaluation may change it, and
    the name of the ``INPUT_CHECKS`` entry that checks the file it names before a run reads anything."""
    if check and check not in INPUT_CHECKS:
        raise ValueError(f"unknown input check {check!r} (known: {', '.join(INPUT_CHECKS)})")
    return dataclasses.field(default=default, metadata={"help": doc, "inference": inference, "check": check})


def finished_run(flag: str, value: str) -> None:
    """A required option naming a finished BL1 run folder (run.json, or an older run's config.json, of
    ``--method full``, and model.safetensors written); a ValueError naming ``flag`` otherwise."""
    if not value:
        raise ValueError(f"{flag} is required: a finished run of --method full (BL1)")
    if not (Path(value) / "model.safetensors").is_file() or not run_file(value).is_file():
        raise ValueError(f"{flag} {value}: not a finished run (needs run.json and model.safetensors)")
    try:  # read as plain JSON (no torch yet); a damaged file is named when the teacher's settings are read
        method = json.loads(run_file(value).read_text(encoding="utf-8"))["run"]["method"]
    except (ValueError, KeyError, TypeError, OSError):
        return
    if method != "full":  # a student's or FastBERT's costs are reported as BL1's plus theirs
        raise ValueError(f"{flag} {value}: a run of --method {method}; the teacher is a run of --method full (BL1)")


INPUT_CHECKS: dict[str, Callable[[str, Any], None]] = {"finished_run": finished_run}


@dataclass(frozen=True)
class MethodOptions:
    """Base of every method's options (a method without options uses it as is)."""

    @classmethod
    def fields(cls) -> list[OptionField]:
        """The declared options, with their resolved types."""
        hints = typing.get_type_hints(cls)
        return [OptionField(f.name, hints[f.name], f.default, f.metadata.get("help", ""),
                            bool(f.metadata.get("inference", False)), f.metadata.get("check", ""))
                for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], method: str) -> MethodOptions:
        """Options of ``method`` from a JSON object; an unknown key or a value of the wrong type is a
        ValueError."""
        known = {f.name: f for f in cls.fields()}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"method {method} takes no option {', '.join(unknown)} "
                             f"(it takes: {', '.join(known) or 'none'})")
        return cls(**{name: known[name].coerce(value) for name, value in data.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> MethodOptions:
        return dataclasses.replace(self, **changes)

    def check_training_inputs(self) -> None:
        """Check the files a training run will read (a teacher run, a config file) before any data is
        read, so that a wrong path fails at once; raise ValueError naming the flag. Default: the declared
        checks (``option(check=...)``); a method whose checks need more overrides this and calls it."""
        check_declared_inputs(self.fields(), self.to_dict())


def check_declared_inputs(fields: list[OptionField], values: dict[str, Any]) -> None:
    """Run each field's declared input check on its value in ``values`` (its default when absent)."""
    for field in fields:
        if field.check:
            INPUT_CHECKS[field.check](field.flag, values.get(field.name, field.default))


@dataclass(frozen=True)
class OptionField:
    """One declared option: name, type (e.g. ``float`` or ``int | None``), default, help, whether evaluation
    may change it, and its input check's name ("" for none)."""

    name: str
    type: Any
    default: Any
    help: str
    inference: bool
    check: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def base_type(self) -> type:
        """The type without ``| None``: what a command-line string is converted to."""
        args = [a for a in typing.get_args(self.type) if a is not type(None)]
        optional = typing.get_origin(self.type) in (Union, types.UnionType)
        return args[0] if optional and len(args) == 1 else self.type

    def coerce(self, value: Any) -> Any:
        """A JSON value checked against the declared type (ints are accepted where floats are)."""
        if value is None and self.base_type is not self.type:
            return None
        kind = self.base_type
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"option {self.flag} must be {kind.__name__}, got {value!r}")
        return value

    def to_json(self) -> dict[str, Any]:
        """The field as a JSON object (the CLI's manifest of the built-in methods' flags)."""
        optional = self.base_type is not self.type
        return {"name": self.name, "type": self.base_type.__name__, "optional": optional, "default": self.default,
                "help": self.help, "inference": self.inference, "check": self.check}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OptionField:
        base = {"bool": bool, "int": int, "float": float, "str": str}[data["type"]]
        kind = base | None if data["optional"] else base
        return cls(data["name"], kind, data["default"], data["help"], data["inference"], data["check"])
