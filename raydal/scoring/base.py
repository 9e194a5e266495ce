"""Strategy protocol and registry.

A strategy scores candidates independently: ``score`` of one sample depends only on that
sample, its id and the round's ``context`` (computed once by ``prepare``). That is what lets
any sharding of the pool produce the same global top-b (see ``raydal.merge``).
Higher scores are picked first.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import typing
from typing import Annotated, Any, ClassVar, Iterable, Literal

import torch

from raydal.errors import ConfigError, suggest
from raydal.registry import Registry


@dataclasses.dataclass(frozen=True)
class AtLeast:
    """Marks a numeric option that must be >= ``bound``: ``Annotated[int, AtLeast(1)]``."""

    bound: int


PositiveInt = Annotated[int, AtLeast(1)]
NonNegative = Annotated[float, AtLeast(0)]


class Strategy:
    """Base class. Subclasses are dataclasses whose fields are the strategy's options."""

    name: ClassVar[str]
    needs_model: ClassVar[bool] = True
    needs_labeled: ClassVar[bool] = False

    def __post_init__(self) -> None:
        """Check every option against its annotation (``option_problem``) when the dataclass is
        built; a subclass with its own ``__post_init__`` calls ``super().__post_init__()``."""
        hints = _option_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            what = option_problem(value, hints.get(f.name))
            if what is not None:
                note = " (not finite)" if isinstance(value, float) and not math.isfinite(value) \
                    else ""
                default = "" if f.default is dataclasses.MISSING else \
                    f"; the default is {f.default!r}"
                raise ConfigError(f"strategy {getattr(self, 'name', type(self).__name__)!r}: "
                                  f"{f.name} must be {what}, got {value!r}{note}{default}")

    def prepare(self, model: torch.nn.Module | None,
                labeled: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Any:
        """Per-round context, computed once (e.g. dynamicAL's cached labeled gradient).

        labeled: batches of (x (B, C, H, W) model inputs, y (B,) int64 true classes), streamed so
        the labeled set need not fit in memory. Returns a picklable object that is shipped to
        every scoring actor. Called only when ``needs_labeled``.
        """
        return None

    def score(self, model: torch.nn.Module | None, x: torch.Tensor, ids: list[str],
              context: Any) -> torch.Tensor:
        """Scores of a batch: x (B, C, H, W) model inputs, ids (B,) -> (B,) float64."""
        raise NotImplementedError

    def score_with_classes(self, model: torch.nn.Module | None, x: torch.Tensor,
                           ids: list[str], context: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and predicted classes of a batch (a class-balanced selection needs both):
        x (B, C, H, W), ids (B,) -> ((B,) float64 scores, (B,) int64 argmax classes).

        The classes must come from the same model the scores do. This default runs one extra
        no-grad forward in eval mode after ``score``; a strategy that computes the model's
        predictions anyway (softmax, pseudo-labels) should override it and return those."""
        scores = self.score(model, x, ids, context)
        return scores, predicted_classes(model, x)

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}


@torch.no_grad()
def predicted_classes(model: torch.nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """(B,) int64 argmax classes of ``model`` (eval mode) on x (B, ...), on the CPU; ties go to
    the smaller class (torch.argmax)."""
    if model is None:
        raise ValueError("predicted classes need a model: a class-balanced selection predicts "
                         "each candidate's class with it; pass model=")
    model.eval()
    device = next(model.parameters()).device
    return model(x.to(device)).argmax(dim=1).cpu().to(torch.int64)


@functools.cache
def _option_hints(cls: type) -> dict[str, Any]:
    """``cls``'s resolved annotations, ``Annotated`` kept; {} when one names a type its module
    cannot resolve (a user's import under ``TYPE_CHECKING``): its options are then not checked."""
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except NameError:
        return {}


def option_problem(value: Any, hint: Any) -> str | None:
    """What an option annotated ``hint`` must be, when ``value`` does not fit it; else None.

    Checked: bool, int, float (finite; an int is accepted), str and Literal choices, optionally
    ``Annotated`` with ``AtLeast``; other annotations (a user's own types) are not checked."""
    bound = None
    if typing.get_origin(hint) is Annotated:
        hint, *extras = typing.get_args(hint)
        bound = next((e.bound for e in extras if isinstance(e, AtLeast)), None)
    if typing.get_origin(hint) is Literal:
        choices = list(typing.get_args(hint))
        fits = any(type(value) is type(c) and value == c for c in choices)
        return None if fits else f"one of {choices}"
    if hint is bool or hint is str:
        return None if isinstance(value, hint) else f"a {hint.__name__}"
    if hint is not int and hint is not float:
        return None
    ok = (isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
          and not (isinstance(value, float) and not math.isfinite(value))
          and (bound is None or value >= bound))
    if ok:
        return None
    if hint is int and bound == 1:
        return "a positive int"
    return ("an int" if hint is int else "a float") + (f" >= {bound}" if bound is not None else "")


def _check_strategy(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"register_strategy takes a subclass of raydal.scoring.Strategy (a "
                          f"dataclass whose fields are its options), got {cls!r:.80}, of type "
                          f"{type(cls).__name__}")
    if getattr(cls, "name", None) != name:
        raise ConfigError(f"strategy class {cls.__qualname__} is registered as {name!r} but its "
                          f"name is {getattr(cls, 'name', None)!r}: set name: ClassVar[str] = "
                          f"{name!r} in its body (an entry point's name must be the class's)")


def _adopt_strategy(name: str, cls: Any) -> None:
    """An entry point of group ``raydal.strategies`` whose import did not register its class."""
    if isinstance(cls, type) and issubclass(cls, Strategy) and not getattr(cls, "name", None):
        cls.name = name
    STRATEGIES.register(name, cls)


#: The strategies: built-in ones, ``@register_strategy`` ones and entry points of group
#: ``raydal.strategies``.
STRATEGIES: Registry[type[Strategy]] = Registry(
    "strategy", "raydal.strategies", builtin=("raydal.scoring",), adopt=_adopt_strategy,
    check=_check_strategy)
_REGISTRY = STRATEGIES._entries  # the old name (read-only users: benchmarks/fuzz.py)


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` (a Strategy subclass with a ``name``) available to
    ``create_strategy(cls.name)``; ConfigError for anything else or a name taken by another."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        _check_strategy("", cls)
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"strategy class {cls.__qualname__} has no name: set "
                          "name: ClassVar[str] = 'my_strategy' in its body")
    return STRATEGIES.register(name, cls)


def list_strategies() -> list[str]:
    return STRATEGIES.names()


def create_strategy(name: str, **options: Any) -> Strategy:
    """Build a registered strategy; a name that is not a registered one, options its
    constructor does not take and invalid option values raise ConfigError (a ValueError) with a
    hint."""
    if not isinstance(name, str):
        raise ConfigError(f"strategy must be a registered strategy's name (a str), one of "
                          f"{list_strategies()}; got {name!r:.80}, of type {type(name).__name__}")
    cls = STRATEGIES.get(name)
    signature = inspect.signature(cls)
    params = signature.parameters.values()
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        for key in options:
            if key not in accepted:
                raise ConfigError(f"strategy {name!r} has no option {key!r}; its options are "
                                  f"{accepted}." + suggest(key, accepted))
    try:
        signature.bind(**options)
    except TypeError as e:  # a required option not given
        raise ConfigError(f"strategy {name!r}: {e}; its options are {accepted}") from None
    try:
        return cls(**options)
    except ConfigError:
        raise
    except ValueError as e:  # the strategy's own check of a value
        raise ConfigError(f"strategy {name!r}: {e}") from None
