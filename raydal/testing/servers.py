"""A real server on 127.0.0.1 for a test: started in its own process group, waited for, stopped.

Tests run MLflow and Label Studio this way (nothing is mocked, nothing leaves the machine).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Mapping, Sequence


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_server(cmd: Sequence[str], health_url: str, log: Path,
                 env: Mapping[str, str] | None = None, start_timeout_s: float = 300
                 ) -> Iterator[float]:
    """Run ``cmd`` until the block ends; yields the start-up seconds (until ``health_url``
    answers 200). Output goes to ``log``; a server that exits or does not answer in
    ``start_timeout_s`` raises RuntimeError with the log's tail. Stops exactly its group."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT,
                                env=None if env is None else dict(env), start_new_session=True)
        t0 = time.monotonic()
        try:
            while True:
                try:
                    with urllib.request.urlopen(health_url, timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() - t0 > start_timeout_s:
                    raise RuntimeError(f"{cmd[0]} did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            yield time.monotonic() - t0
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
