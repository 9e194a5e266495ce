"""Atomic file writes and the run-directory lock: the one writer every persisted file goes through.

A file is written to a temporary sibling, flushed to disk, then renamed over its final name, so a
reader (or a resumed run) sees either the old file or the complete new one, never a partial write.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename tmp_path to ``path`` atomically (same directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_parquet(path: str | Path, table: pa.Table, row_group_size: int = 1024) -> Path:
    """Row groups of ``row_group_size`` rows: Ray Data reads a file as that many blocks."""
    return atomic_write(path, lambda p: pq.write_table(table, p, row_group_size=row_group_size))


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text())


class RunDirLocked(RuntimeError):
    """Another process holds the run directory."""


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path) -> Iterator[None]:
    """Exclusive advisory lock on ``run_dir/.lock`` for the life of a driver.

    The kernel drops the lock when the holder dies (even by SIGKILL), so a crashed driver never
    leaves a stale lock behind.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / ".lock", "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise RunDirLocked(
                    f"run directory {run_dir} is in use by {holder}; wait for it to finish or "
                    "stop it before running again (two drivers on one run would duplicate work)"
                ) from None
            raise
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()


def fault_point(name: str) -> None:
    """Test-only switch: SIGKILL this process at the named point if RAYDAL_FAULT_AT == name.

    Fault-injection tests use it to kill a real driver in a chosen phase of a round.
    """
    if os.environ.get("RAYDAL_FAULT_AT") == name:
        os.kill(os.getpid(), 9)
