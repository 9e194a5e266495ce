"""Strategy protocol and registry.

A strategy scores candidates independently: ``score`` of one sample depends only on that
sample, its id and the round's ``context`` (computed once by ``prepare``). That is what lets
any sharding of the pool produce the same global top-b (see ``raydal.merge``).
Higher scores are picked first.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterable

import torch

from raydal.errors import suggest

_REGISTRY: dict[str, type["Strategy"]] = {}


class Strategy:
    """Base class. Subclasses are dataclasses whose fields are the strategy's options."""

    name: ClassVar[str]
    needs_model: ClassVar[bool] = True
    needs_labeled: ClassVar[bool] = False

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


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` available to ``create_strategy(cls.name)``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"strategy {cls.name!r} is already registered by {_REGISTRY[cls.name]}")
    _REGISTRY[cls.name] = cls
    return cls


def list_strategies() -> list[str]:
    return sorted(_REGISTRY)


def create_strategy(name: str, **options: Any) -> Strategy:
    """Build a registered strategy; unknown names, unknown options and invalid option values
    raise ConfigError (a ValueError) with a hint."""
    from raydal.errors import ConfigError
    if name not in _REGISTRY:
        raise ConfigError(f"unknown strategy {name!r}; expected one of {list_strategies()}."
                         + suggest(name, list_strategies()))
    cls = _REGISTRY[name]
    fields = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    for key in options:
        if key not in fields:
            raise ConfigError(f"strategy {name!r} has no option {key!r}; its options are "
                              f"{fields}." + suggest(key, fields))
    try:
        return cls(**options)
    except ValueError as e:  # the strategy's own check of a value
        raise ConfigError(f"strategy {name!r}: {e}") from None
