"""Joining the Ray cluster a run names, or starting a local one, and never hanging on a dead one.

The address comes from, in this order: ``ray.address`` in the config, ``RAY_ADDRESS`` (set by
``ray job submit``), then Ray's own convention, the address file the last ``ray start --head``
on this machine left (``ray_current_cluster`` in Ray's temp dir). ``local`` (or nothing found)
starts a fresh local cluster.

Ray itself retries a dead address for minutes (a SIGKILLed head leaves its address file
behind). Here the GCS port is probed first: a cluster that does not answer within
``timeout_s`` raises ``ClusterUnreachable`` naming the address, where it came from and the fix;
one that answers but has no node on this machine (a driver needs one) raises ``NoNodeHere``.
While connected, a watchdog thread probes the same port; a head that stays gone for
``HEAD_LOST_S`` ends the driver with a clear message (everything a run finished is already
written atomically, so the next run resumes from there).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from raydal.errors import RaydalError

log = logging.getLogger("raydal")
LOCAL = "local"
#: Seconds the GCS port may stay closed before a connected driver gives up on its head.
HEAD_LOST_S = 20.0
#: Exit status of a driver whose head died (distinct from errors: status 2, crashes: 1).
HEAD_LOST_EXIT = 3
#: Set in the environment of a driver that ``supervise`` runs (so it does not supervise again).
SUPERVISED_ENV = "RAYDAL_SUPERVISED"


class ClusterUnreachable(RaydalError, ConnectionError):
    """The named Ray cluster does not answer (its head is gone or the address is wrong)."""


class NoNodeHere(RaydalError, ConnectionError):
    """The named cluster answers, but none of its nodes runs on this machine."""


def cluster_address(configured: str | None = None) -> tuple[str | None, str]:
    """(host:port to join or None for a new local cluster, where the address came from)."""
    if configured:
        return (None if configured == LOCAL else configured), "ray.address"
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return (None if env == LOCAL else env), "RAY_ADDRESS"
    from ray._private.utils import get_ray_address_file, read_ray_address
    last = read_ray_address()
    if last:
        return last, f"the last `ray start` on this machine ({get_ray_address_file(None)})"
    return None, "no address given: a new local cluster"


def _host_port(address: str) -> tuple[str, int] | None:
    """host and port of ``ip:port``, ``ray://ip:port`` or ``gcs://ip:port``; None if no port."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def port_open(host: str, port: int, timeout_s: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_reachable(address: str, source: str, timeout_s: float = 10.0) -> None:
    """Return once ``address``'s port accepts connections; else raise ClusterUnreachable."""
    hp = _host_port(address)
    if hp is None:
        return  # not a host:port (e.g. "auto"): Ray resolves it and reports its own error
    deadline = time.monotonic() + timeout_s
    while not port_open(*hp, timeout_s=min(5.0, timeout_s)):
        if time.monotonic() >= deadline:
            raise ClusterUnreachable(
                f"no Ray cluster answers at {address} (from {source}) after {timeout_s:.0f} s: "
                "its head is stopped or the address is wrong. Start the head (`ray start --head`"
                " or `ray up cluster.yaml`) and run again, or set `ray.address: local` in the "
                "config (or RAY_ADDRESS=local) to run on a new local cluster"
                + ("; the address file is left behind by a head that was killed: delete it or "
                   "start a head" if source.startswith("the last") else ""))
        time.sleep(1.0)


def connect(address: str | None = None, *, num_cpus: int | None = None,
            log_to_driver: bool = False, timeout_s: float = 10.0) -> str | None:
    """Join the cluster (see the module docstring) or start a local one; returns the address
    joined (None: local). ``num_cpus`` sizes a local cluster only. Idempotent."""
    import ray
    if ray.is_initialized():
        return None
    target, source = cluster_address(address)
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING,
                  log_to_driver=log_to_driver)
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    if target is None:
        ray.init(address=LOCAL, num_cpus=num_cpus, **kwargs)
    else:
        log.info("joining the Ray cluster at %s (from %s)", target, source)
        wait_reachable(target, source, timeout_s)
        try:
            ray.init(address=target, **kwargs)
        except ConnectionError as err:
            if "No node info found" not in str(err.__cause__):
                raise
            raise NoNodeHere(
                f"the Ray cluster at {target} (from {source}) answers, but none of its nodes "
                "runs on this machine (or this machine's node just died), and a Ray driver "
                "needs one: run raydal on the head, or submit it as a job (`ray job submit "
                "--address http://HEAD:8265 -- raydal run CONFIG`, see jobs/)") from err
        watch_head(target)
    if main:  # Ray's C++ handler dumps stack lines on SIGTERM: back to a Python handler
        signal.signal(signal.SIGTERM, sigterm if callable(sigterm)
                      else signal.getsignal(signal.SIGTERM))
    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False  # raydal draws its own
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return target


def watch_head(address: str, lost_s: float = HEAD_LOST_S) -> threading.Thread | None:
    """A daemon thread that ends this process (status HEAD_LOST_EXIT) once ``address``'s port
    has been closed for ``lost_s`` seconds: Ray's own driver would retry for minutes."""
    hp = _host_port(address)
    if hp is None:
        return None

    def watch() -> None:
        down_since = None
        while True:
            time.sleep(2.0)
            if port_open(*hp):
                down_since = None
                continue
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since >= lost_s:
                print(_head_lost_message(address), file=sys.stderr, flush=True)
                os._exit(HEAD_LOST_EXIT)

    thread = threading.Thread(target=watch, name="raydal-head-watch", daemon=True)
    thread.start()
    return thread


def _head_lost_message(address: str) -> str:
    return (f"error: the Ray head at {address} stopped answering (killed or its machine lost); "
            "this driver exits. Every finished step is saved: start the head again (or use "
            "`ray.address: local`) and rerun the same command to resume")


def _child_setup() -> None:
    """In the child, before exec: its own process group (a terminal's Ctrl-C reaches only the
    supervisor, which passes it on once), and SIGKILL when its parent dies (Linux), so a killed
    supervisor never leaves its driver running, holding the run directory."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def supervise(command: list[str], address: str) -> int:
    """Run ``command`` (a driver joined to ``address``) as a child process and return its exit
    status, or HEAD_LOST_EXIT with a clear message when it failed because the head is gone.

    A driver on the head's own machine is ended by Ray itself (status 1, nothing on stderr) the
    moment its local raylet dies, before ``watch_head`` can act; only a parent process outlives
    it to say why. SIGINT and SIGTERM are passed on to the child.
    """
    child = subprocess.Popen(command, env={**os.environ, SUPERVISED_ENV: "1"},
                             preexec_fn=_child_setup)
    main = threading.current_thread() is threading.main_thread()
    if main:
        previous = {s: signal.signal(s, lambda signum, _: child.send_signal(signum))
                    for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = child.wait()
    finally:
        if main:
            for s, handler in previous.items():
                signal.signal(s, handler)
    hp = _host_port(address)
    if rc < 0 or rc in (0, 2, 130, 143, HEAD_LOST_EXIT) or hp is None or port_open(*hp):
        return rc  # negative: killed by a signal, which Ray's exit on a lost raylet is not
    print(_head_lost_message(address), file=sys.stderr, flush=True)
    return HEAD_LOST_EXIT
