"""Runtime specs generated from their config sections, so each setting is declared once.

A config section (``raydal.config``, pydantic) declares a field's type, default and meaning; the
runtime spec that travels to Ray workers (``ModelSpec``, ``TrainSettings``, ``InputSpec``) is a
frozen dataclass made here from that section's fields, in its order, plus the few values the
config does not hold (the class count, the round's seed). A field added to a section reaches its
spec without a second declaration, with the same default.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _field(info: Any) -> Any:
    """A dataclasses.field with the pydantic field's default (or default factory)."""
    if info.default_factory is not None:
        return dataclasses.field(default_factory=info.default_factory)
    if info.default is PydanticUndefined:
        return dataclasses.field()
    return dataclasses.field(default=info.default)


def runtime_spec(name: str, section: type[BaseModel], base: type, *, module: str,
                 only: tuple[str, ...] | None = None, required: tuple[str, ...] = (),
                 insert: tuple[tuple[str, str, type, Any], ...] = ()) -> type:
    """A frozen dataclass ``name`` (methods from ``base``, defined in ``module`` so it pickles)
    whose fields are ``section``'s (those in ``only``, if given) with their types and defaults
    (none for those in ``required``, which must come first), plus ``insert``: (after field,
    name, type, default) tuples, which fix positional order."""
    specs = []
    for field_name, info in section.model_fields.items():
        if only is not None and field_name not in only:
            continue
        field = dataclasses.field() if field_name in required else _field(info)
        specs.append((field_name, info.annotation, field))
    for after, field_name, annotation, default in insert:
        at = next(i for i, (n, _, _) in enumerate(specs) if n == after) + 1
        specs.insert(at, (field_name, annotation, dataclasses.field(default=default)))
    cls = dataclasses.make_dataclass(name, specs, bases=(base,), frozen=True)
    cls.__module__, cls.__doc__ = module, base.__doc__  # make_dataclass's module=: Python 3.12+
    return cls


#: training.mixed_precision's choices (``raydal.models.MIXED_PRECISION`` maps them to dtypes)
MIXED_PRECISION_NAMES = ("none", "bf16")


def mixed_precision_name_problem(value: Any) -> str | None:
    """Why ``training.mixed_precision`` cannot be ``value`` (not one of the names), or None."""
    if not isinstance(value, str) or value not in MIXED_PRECISION_NAMES:
        return (f"got {value!r}; expected one of {list(MIXED_PRECISION_NAMES)} (bf16: autocast "
                "to bfloat16, no loss scaling needed; fp16 is not offered)")
    return None
