"""OmegaConf's type rules in a user's words: a value converted as OmegaConf converts it for
a schema's type hint (`typed`, for the nodes typed Any that `schema.hold_nodes` holds to
their schema), and OmegaConf's own type errors reworded (`allowed`). One place for both, so
that a key is told the same thing whichever of the two checked it."""

from __future__ import annotations

import re
from enum import StrEnum
from types import UnionType
from typing import Any, get_args

from omegaconf import ListConfig

from looplab.core.errors import ConfigError

# What a type allows, in a user's words: said alike by `typed` and `allowed`.
AN_INTEGER = "it must be an integer"
A_NUMBER = "it must be a number"
A_LIST = "it must be a list, e.g. [a,b]"
NOT_NULL = "it cannot be null"


def typed(key: str, value: Any, hint: Any) -> Any:
    """`value` as the schema's `hint` holds it (itself when it already is), as OmegaConf
    would convert it; else ConfigError in OmegaConf's words."""
    if isinstance(hint, UnionType):  # `X | None`, the schema's only unions
        if value is None:
            return None
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
    if value is None:
        rule = NOT_NULL
    elif isinstance(hint, type) and issubclass(hint, StrEnum):
        if str(value) in {m.value for m in hint}:
            return str(value)
        rule = f"choose one of {', '.join(m.value for m in hint)}"
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        rule = AN_INTEGER
    elif hint is float:
        number = _as_float(value)
        if number is not None:
            return number
        rule = A_NUMBER
    elif hint is str:
        if isinstance(value, str | int | float):  # OmegaConf's: a number or a bool as text
            return str(value)
        rule = "it must be a single value, not a group or a list"
    else:  # list[...]
        if isinstance(value, list | ListConfig):
            (item,) = get_args(hint)
            items = [typed(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        rule = A_LIST
    raise ConfigError(f"{key}={'null' if value is None else value} is not allowed: {rule}")


def _as_float(value: Any) -> float | None:
    """A number as OmegaConf's float node takes it (an int, or text that is one), else None."""
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def allowed(message: str) -> str:
    """What OmegaConf's type check allows, in a user's words."""
    checks = [
        (r"expected one of \[(.*)\]", lambda m: f"choose one of {m.group(1)}"),
        (r"converted to Integer", lambda m: AN_INTEGER),
        (r"converted to Float", lambda m: A_NUMBER),
        (r"not a valid bool", lambda m: "it must be true or false"),
        (r"is not a ListConfig", lambda m: A_LIST),
        (r"is not Optional", lambda m: NOT_NULL),
        (r"is not a subclass of (\w+)", lambda m: "it is a group of keys; set one key in it"),
    ]
    for pattern, wording in checks:
        found = re.search(pattern, message)
        if found:
            return wording(found)
    return message
