"""A backend's own options model (pydantic) validated with the config's wording of errors.

Each seam's backend (an oracle, a pool source) declares its settings as a pydantic model; the
config holds them as a plain mapping (``loop.oracle_options``, ``data.pool_options``) and the build
step validates them here, so every bad key is named as ``config field 'loop.oracle_options.url':
...`` like a field of the config itself.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from raydal.errors import ConfigError, suggest


def explain(err: ValidationError, cls: type[BaseModel], prefix: str = "") -> str:
    """One line a bad field of ``cls`` (written at ``prefix`` in the config): the field, the
    value and what is expected; unknown keys with the known ones and the closest."""
    lines = []
    for e in err.errors():
        loc = ".".join([prefix] * bool(prefix) + [str(p) for p in e["loc"]])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parent = cls
            for part in e["loc"][:-1]:
                field = parent.model_fields.get(str(part))
                parent = getattr(field, "annotation", None) if field else None
                if not (isinstance(parent, type) and issubclass(parent, BaseModel)):
                    parent = None
                    break
            known = list(parent.model_fields) if parent else []
            lines.append(f"config field '{loc}': unknown key; expected one of {known}."
                         + suggest(str(e["loc"][-1]), known))
        elif e["type"] == "missing":
            lines.append(f"config field '{loc}': missing; it has no default, set it")
        elif e["type"] == "value_error" or loc == "":
            lines.append(f"config field '{loc or '(top level)'}': {msg}")
        else:
            lines.append(f"config field '{loc}': got {e.get('input')!r}; {msg.lower()}")
    return "invalid config:\n  " + "\n  ".join(lines)


def validate_options(model: type[BaseModel] | None, data: Any, field: str,
                     owner: str) -> BaseModel | None:
    """``data`` validated by ``model`` (a backend's options model, written in the config at
    ``field``); None for a backend without options (``model`` None), which refuses any.
    ``owner`` names the backend in messages ("oracle 'labelstudio'")."""
    if model is None:
        if data:
            raise ConfigError(f"config field '{field}': {owner} takes no options, got "
                              f"{sorted(data) if isinstance(data, dict) else data!r}")
        return None
    if isinstance(data, model):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config field '{field}': expected a mapping of {owner}'s options, got "
                          f"{data!r:.80}")
    required = [n for n, f in model.model_fields.items() if f.is_required()]
    if not data and required:
        raise ConfigError(f"config field '{field}' is missing: {owner} needs {field} with "
                          f"{', '.join(required)}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(explain(e, model, field)) from None
