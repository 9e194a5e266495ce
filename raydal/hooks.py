"""Hook points: named places in a run where registered callables are called; none by default.

The library calls ``point(name, **info)`` at these places (with no hook registered, a no-op):

    select-R     the loop, round R: the picks are scored, nothing is written yet
    selected-R   the loop: round R's selection is written, no label bought yet
    label-R      the loop: round R's answers are bought, not yet written
    train-R      the driver, while round R trains (every 0.5 s once an epoch has finished)
    epoch-end    a training worker after each epoch; info: rank, epoch (1-based)

A hook is ``hook(name, **info) -> None``. Hooks come from ``registered(...)`` in this process and
from the ``RAYDAL_HOOKS`` environment variable (comma-separated ``module:callable``, imported on
the first point), so a driver that ``raydal run`` starts as a child gets them too. The driver's
hooks travel with the training config to the training workers (``current``). Fault-injection
tests use them (``raydal.testing.faults``) to kill a real process at a chosen point.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from importlib import import_module
from typing import Callable, Iterator

Hook = Callable[..., None]
HOOKS_ENV = "RAYDAL_HOOKS"

_hooks: list[Hook] = []
_env_loaded = False


def _load_env_hooks() -> None:
    global _env_loaded
    if _env_loaded:
        return
    _env_loaded = True
    for spec in filter(None, (s.strip() for s in os.environ.get(HOOKS_ENV, "").split(","))):
        module, sep, attr = spec.partition(":")
        if not sep or not attr:
            raise ValueError(f"{HOOKS_ENV}={spec!r}: expected module:callable, e.g. "
                             "raydal.testing.faults:kill_at_fault_point")
        hook = getattr(import_module(module), attr)
        if hook not in _hooks:
            _hooks.append(hook)


def point(name: str, **info) -> None:
    """Call every registered hook with ``name`` and ``info``; nothing happens without hooks."""
    _load_env_hooks()
    for hook in tuple(_hooks):
        hook(name, **info)


def current() -> list[Hook]:
    """This process's hooks (picklable ones travel to training workers)."""
    _load_env_hooks()
    return list(_hooks)


@contextmanager
def registered(*hooks: Hook) -> Iterator[None]:
    """Register ``hooks`` for the duration of the block (one already registered is kept once)."""
    _load_env_hooks()
    added = []
    for h in hooks:
        if h not in _hooks:
            _hooks.append(h)
            added.append(h)
    try:
        yield
    finally:
        for h in added:
            _hooks.remove(h)
