"""Atomic writes and the run-directory lock: the one writer every persisted file goes through.

Locations are local paths or pyarrow filesystem URIs (``raydal.fs``). A reader (or a resumed
run) sees either the old file or the complete new one, never a partial write:

- local: the bytes go to a temporary sibling, are flushed to disk, then renamed over the name;
- object stores (s3://, gs://): the file is produced locally, then uploaded by one output
  stream; the store makes an object visible only when its upload completes (a single PUT or a
  completed multipart upload), and a killed writer leaves the old object in place;
- other filesystems (hdfs://): uploaded to a temporary sibling, then renamed.

A folder (a checkpoint) is written whole: locally a temporary sibling folder renamed into
place; elsewhere its files are uploaded one by one and a commit file last, so the folder counts
as present only once its commit file exists.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from raydal.errors import RunDirError, RunDirLocked
from raydal.fs import Location, Where, resolve

log = logging.getLogger("raydal")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _upload(src: Path, dest: Location) -> None:
    """Copy local file ``src`` to ``dest`` (not local) so that it appears whole or not at all."""
    size = src.stat().st_size
    target = dest
    if not dest.is_object_store:  # a filesystem with folders and rename
        dest.fs.create_dir(dest.parent.path, recursive=True)
        target = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
    # One write of the whole file (memory-mapped, not copied): the stream holds it until close,
    # so no partial object can be completed on the way.
    with dest.fs.open_output_stream(target.path) as out:
        if size:
            with pa.memory_map(str(src)) as m:
                out.write(m.read_buffer())
    if target is not dest:
        try:
            dest.fs.move(target.path, dest.path)
        except BaseException:
            target.delete()
            raise


def atomic_write(path: Where, write: Callable[[Path], None]) -> Location:
    """Call ``write(tmp_path)`` (a local file) then publish it at ``path`` atomically."""
    loc = resolve(path)
    if not loc.is_local:
        with tempfile.TemporaryDirectory(prefix="raydal-upload-") as d:
            tmp = Path(d) / loc.name
            write(tmp)
            _upload(tmp, loc)
        return loc
    path = loc.local_path
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
    return loc


def atomic_write_bytes(path: Where, data: bytes) -> Location:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_json(path: Where, obj: Any) -> Location:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_parquet(path: Where, table: pa.Table, row_group_size: int = 1024) -> Location:
    """Row groups of ``row_group_size`` rows: Ray Data reads a file as that many blocks."""
    return atomic_write(path, lambda p: pq.write_table(table, p, row_group_size=row_group_size))


def atomic_write_folder(path: Where, fill: Callable[[Path], None], commit: str) -> Location:
    """Call ``fill(tmp_dir)`` to write a flat folder's files, then publish it at ``path`` whole.

    ``commit`` names the file written last on stores without folder rename; a folder is
    complete when that file exists (``(location / commit).exists()``), locally and elsewhere.
    An existing folder at ``path`` is replaced.
    """
    loc = resolve(path)
    if not loc.is_local:
        with tempfile.TemporaryDirectory(prefix="raydal-upload-") as d:
            fill(Path(d))
            files = sorted(Path(d).iterdir())
            if commit not in [f.name for f in files]:
                raise ValueError(f"folder {loc} has no commit file {commit!r}")
            loc.delete()  # the old commit file goes first: from here on the folder is absent
            for f in sorted(files, key=lambda f: f.name == commit):  # commit last
                _upload(f, loc / f.name)
        return loc
    path = loc.local_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fill(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return loc


def read_json(path: Where, default: Any = None) -> Any:
    """The JSON record at ``path`` (``default`` if absent); RunDirError if it is not JSON."""
    loc = resolve(path)
    if not loc.exists():
        return default
    try:
        return json.loads(loc.read_bytes())
    except ValueError as e:  # raydal writes these atomically: edited or damaged by hand
        raise RunDirError(f"{loc} is not a valid JSON record ({e}); restore it from a backup, "
                          "or delete it if it is state.json (the next `raydal run` rewrites "
                          "it)") from None


def read_table(path: Where, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file (or folder) read whole: for run records, never for a pool."""
    loc = resolve(path)
    return pq.read_table(loc.path, filesystem=loc.fs, columns=columns)


# ---- the run-directory lock --------------------------------------------------------------------
#: Seconds an object-store lease stays valid without a heartbeat (see ``Lease``).
LEASE_TTL = 60.0


@contextlib.contextmanager
def run_dir_lock(run_dir: Where, lease_ttl: float = LEASE_TTL) -> Iterator[None]:
    """Exclusive use of ``run_dir`` for the life of a driver (RunDirLocked if in use).

    Local folders: an advisory ``flock`` on ``run_dir/.lock``; the kernel drops it when the
    holder dies (even by SIGKILL), so a crashed driver never leaves a stale lock behind.
    Elsewhere (object stores): a best-effort ``Lease`` object that expires ``lease_ttl``
    seconds after its holder stops renewing it.
    """
    loc = resolve(run_dir)
    if not loc.is_local:
        with Lease(loc / ".lease.json", ttl=lease_ttl).held():
            yield
        return
    run_dir = loc.local_path
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


class Lease:
    """A lease object on a store without locks: {owner, host, pid, time}, renewed by a thread.

    BEST-EFFORT, NOT A LOCK. Object stores offer no compare-and-swap here, so taking the lease
    is read, write, wait ``settle`` seconds, read back: two drivers that start within the same
    moment can both believe they hold it, and a holder paused for longer than ``ttl`` (or on a
    host whose clock is off by that much) can be taken over while it still runs (it logs an
    error when it notices). It stops the common mistake, a second driver on a live run; it does
    not make concurrent drivers safe. A holder killed without releasing blocks the run
    directory until its lease is ``ttl`` seconds old.
    """

    def __init__(self, obj: Where, ttl: float = LEASE_TTL, settle: float = 1.0):
        self.obj, self.ttl, self.settle = resolve(obj), float(ttl), settle
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.lost = False

    def read(self) -> dict | None:
        try:
            return json.loads(self.obj.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:  # unreadable: treated as expired
            return {"owner": "?", "time": 0.0}

    def _write(self) -> None:
        atomic_write_json(self.obj, {"owner": self.owner, "host": socket.gethostname(),
                                     "pid": os.getpid(), "time": time.time(), "ttl": self.ttl})

    def _refuse_if_held(self, cur: dict | None) -> None:
        if cur is None or cur.get("owner") == self.owner:
            return
        age = time.time() - float(cur.get("time", 0.0))
        if age < self.ttl:
            raise RunDirLocked(
                f"run directory {self.obj.parent} is in use by {cur.get('host')} pid "
                f"{cur.get('pid')} (lease renewed {age:.0f}s ago); wait for it to finish or stop "
                f"it; if that driver is dead, its lease expires in {self.ttl - age:.0f}s "
                f"(two drivers on one run would duplicate work)")

    def acquire(self) -> None:
        self._refuse_if_held(self.read())
        self._write()
        time.sleep(self.settle)  # a rival that wrote at the same moment shows up now
        cur = self.read()
        if (cur or {}).get("owner") != self.owner:
            self._refuse_if_held(cur)
            raise RunDirLocked(f"lost the lease on {self.obj.parent} to a driver that started at "
                               "the same moment; try again")

    def renew(self) -> bool:
        """Refresh the lease; False (and ``lost``) if another driver has taken it over."""
        cur = self.read()
        if (cur or {}).get("owner") not in (self.owner, None):
            self.lost = True
            log.error("the lease on %s was taken over by %s while this driver ran (it was not "
                      "renewed for %.0fs); two drivers may now write the same run",
                      self.obj.parent, cur.get("host"), self.ttl)
            return False
        self._write()
        return True

    def release(self) -> None:
        if not self.lost and (self.read() or {}).get("owner") == self.owner:
            self.obj.delete()

    @contextlib.contextmanager
    def held(self) -> Iterator["Lease"]:
        self.acquire()
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(self.ttl / 4):
                try:
                    if not self.renew():
                        return
                except Exception as e:  # a store hiccup: try again at the next beat
                    log.warning("could not renew the lease on %s: %s", self.obj.parent, e)

        thread = threading.Thread(target=heartbeat, name="raydal-lease", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.release()
