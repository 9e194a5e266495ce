"""Fault injection for tests: hooks (raydal.hooks) that kill a real process at a chosen point.

In a driver started as a child process (``raydal run``), through the environment::

    env = {**os.environ, **faults.kill_at_env("select-1")}   # SIGKILL at hook point select-1

In this process, for a training worker (the hook travels with the training config)::

    with hooks.registered(faults.worker_dies_once(marker, epoch=2)):
        train_round(...)
"""
from __future__ import annotations

import os
import signal
import time
from functools import partial
from pathlib import Path

from raydal.hooks import HOOKS_ENV, Hook

#: The hook point at which ``kill_at_fault_point`` SIGKILLs its process.
FAULT_AT_ENV = "RAYDAL_FAULT_AT"


def kill_at_fault_point(name: str, **info) -> None:
    """Hook: SIGKILL this process at the point named by $RAYDAL_FAULT_AT."""
    if os.environ.get(FAULT_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def kill_at_env(point: str) -> dict[str, str]:
    """Environment variables that make a raydal process SIGKILL itself at hook point ``point``."""
    return {HOOKS_ENV: f"{__name__}:kill_at_fault_point", FAULT_AT_ENV: point}


def _die_once(name: str, *, marker: str, at_rank: int, at_epoch: int, **info) -> None:
    if (name == "epoch-end" and info.get("rank") == at_rank and info.get("epoch") == at_epoch
            and not Path(marker).exists()):
        Path(marker).touch()  # records that it happened: the retried worker lives
        time.sleep(5)  # the controller collects the previous epoch's report asynchronously
        os._exit(1)


def worker_dies_once(marker: str | Path, epoch: int = 2, rank: int = 0) -> Hook:
    """Hook: training worker ``rank`` exits after ``epoch``, once (the ``marker`` file says it
    did), as a worker on a lost node would."""
    return partial(_die_once, marker=str(marker), at_rank=rank, at_epoch=epoch)
