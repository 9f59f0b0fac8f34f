"""The shape a JSON file's content must have, checked field by field (issue 20, item 2).

``validated(shape, data)`` turns parsed JSON into ``shape`` (a dataclass, possibly nested, or a typing
form such as ``list[str]``) or raises ``SchemaError`` naming the first wrong field by its path, e.g.
``field train.lr: Input should be a valid number``. The dataclasses' own ``__post_init__`` checks run as
part of it and are reported the same way. A dataclass that sets ``__pydantic_config__ = {"extra":
"forbid"}`` refuses keys it does not know.

Why pydantic: it validates nested dataclasses and typed containers against their annotations and
reports where each error is; it is installed for ``dht serve`` already. Lax mode, on purpose: a JSON
integer where a float goes, ``2.0`` where an int goes or ``"384"`` for a number is what a hand-edited
file may hold and means the same; ``"abc"`` for a number, ``2.5`` for an int, a list for an object are
refused. It is imported only when a file is read, so the CLI's quick refusals stay fast.
"""

from __future__ import annotations

from typing import Any


class SchemaError(ValueError):
    """Parsed JSON does not have the shape its reader expects; the message names the field."""


def validated(shape: Any, data: Any, at: str = "") -> Any:
    """``data`` (parsed JSON) as ``shape``; SchemaError naming the first wrong field otherwise (its path
    under ``at``, the place of ``data`` in its file, if given)."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(shape).validate_python(data)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in ([at] if at else []) + list(first["loc"]))
        message = first["msg"].removeprefix("Value error, ")
        raise SchemaError(f"field {where}: {message}" if where else message) from None
