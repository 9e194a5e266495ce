"""A Ray cluster on this machine that behaves like a cloud cluster: no shared filesystem.

    sudo python -m raydal.testing.cluster --workers 2 --private /tmp/data   # Ctrl-C stops it
    python -m raydal.testing.cluster --workers 0 --autoscale-from cluster.yaml  # GPU group from 0

The head (``ray start --head``, 0 CPUs by default, as ``cluster.yaml``'s head) runs in this
machine's mount namespace, so drivers started here run "on the head". Each worker node runs in
its own mount namespace (``unshare --mount --propagation private``, root only) with an empty
tmpfs over the cluster's base folder (its own Ray temp dir lives there) and over every
``private`` path: no node reads another node's files there. Storage every node shares must be
reached over the network, e.g. an S3 server on 127.0.0.1. Every node listens on 127.0.0.1 with
its own ports.

Each node is started in its own process group and stopped by killing exactly its processes
(a worker: every process in its mount namespace; the head: its process group, its descendants
and whatever names its temp dir). ``ray stop`` is never used: it stops every Ray on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
#: Ray's start-up waits (default 30-60 s) on a loaded machine: a raylet registering with the
#: GCS (``ray start`` gives up once its first lookup of the node fails, which waits this
#: long), a raylet waiting for its agents' port files, a worker process registering.
STARTUP_WAITS = {"RAY_raylet_start_wait_time_s": "300", "RAY_agent_register_timeout_ms": "300000",
                 "RAY_worker_register_timeout_seconds": "300"}


def unavailable_reason() -> str | None:
    """Why a LocalCluster with worker nodes cannot start here (None: it can)."""
    if sys.platform != "linux":
        return "needs Linux mount namespaces"
    if os.geteuid() != 0:
        return "needs root (unshare --mount and tmpfs mounts); CI runs as root"
    if shutil.which("unshare") is None:
        return "needs util-linux's unshare"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --mount fails here: {probe.stderr.strip()}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Ray's name of each agent port (its port file) -> the ``ray start`` flag that sets it.
AGENT_PORT_FLAGS = {"dashboard_agent_listen_port": "--dashboard-agent-listen-port",
                    "metrics_agent_port": "--dashboard-agent-grpc-port",
                    "runtime_env_agent_port": "--runtime-env-agent-port",
                    "metrics_export_port": "--metrics-export-port"}


def agent_ports() -> dict[str, int]:
    """Distinct ports for one node's agents (nodes on one IP must not share them)."""
    return {name: free_port() for name in AGENT_PORT_FLAGS}


def port_args(ports: dict[str, int]) -> list[str]:
    return [f"{AGENT_PORT_FLAGS[name]}={port}" for name, port in ports.items()]


#: The node type Ray's fake provider gives the head (``FAKE_HEAD_NODE_TYPE``).
FAKE_HEAD_TYPE = "ray.head.default"
#: Environment of a head whose monitor runs the fake provider (Ray's AutoscalingCluster sets
#: the same): it launches worker nodes as local processes, and looks every second.
FAKE_AUTOSCALER_ENV = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}


def fake_autoscaling_config(cluster_yaml: str | Path, worker_cpus: float | None = None,
                            idle_timeout_minutes: float | None = None,
                            max_workers: int | None = None) -> dict:
    """An autoscaler config for Ray's fake multi-node provider made from ``cluster_yaml``'s
    ``available_node_types``: the same worker types, resources (GPUs become fake resources:
    Ray schedules on them, torch finds no device), ``min_workers`` and ``max_workers``; the
    head keeps its own resources. ``worker_cpus`` caps each worker type's CPUs (a laptop
    cannot back 8 per node), ``idle_timeout_minutes`` and ``max_workers`` override the file's.

    Ray's own ``ray.cluster_utils.AutoscalingCluster`` builds the same kind of config but
    starts and stops it with ``ray stop --force`` (every Ray on the machine) and reads an
    example file the 2.60 wheel does not ship, so ``LocalCluster(autoscaling=...)`` starts it.
    The provider's ``gcs_address`` is filled in when the head starts.
    """
    import yaml
    src = yaml.safe_load(Path(cluster_yaml).read_text())
    types = src["available_node_types"]
    head = types[src["head_node_type"]]
    workers = {}
    for name, t in types.items():
        if name == src["head_node_type"]:
            continue
        res = dict(t.get("resources", {}))
        if worker_cpus is not None:
            res["CPU"] = min(res.get("CPU", worker_cpus), worker_cpus)
        workers[name] = {"resources": res, "node_config": {},
                         "min_workers": t.get("min_workers", 0),
                         "max_workers": t.get("max_workers", src.get("max_workers", 1)) if
                         max_workers is None else max_workers}
    return {
        "cluster_name": src.get("cluster_name", "fake"),
        "max_workers": src.get("max_workers", 8) if max_workers is None else max_workers,
        "upscaling_speed": src.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": (src.get("idle_timeout_minutes", 5)
                                 if idle_timeout_minutes is None else idle_timeout_minutes),
        "provider": {"type": "fake_multinode", "disable_launch_config_check": True,
                     "disable_node_updaters": True,
                     "use_node_id_as_ip": True},
        "auth": {"ssh_user": "ray"},
        "available_node_types": {
            FAKE_HEAD_TYPE: {"resources": dict(head.get("resources", {})), "node_config": {},
                             "max_workers": 0}, **workers},
        "head_node_type": FAKE_HEAD_TYPE,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


#: Niceness of a node while it starts (root only; 0 again once it runs). The raylet aborts
#: when its agents (Python processes) have not written their ports within a fixed ~30 s, which
#: a 2-core machine busy with other work misses at normal priority.
STARTUP_NICE = -10


def _boost() -> None:
    os.nice(STARTUP_NICE)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _listening_ports() -> set[int]:
    """TCP ports some socket of this network namespace listens on (IPv4 and IPv6)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()  # sl, local_address, rem_address, st, ...
            if fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _runs(node: "Node", title: str) -> bool:
    """Whether a process of ``node`` has ``title`` in its command line."""
    for pid in node.processes():
        try:
            if title in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                return True
        except OSError:
            continue
    return False


def _in_namespace(ns: str) -> list[int]:
    """PIDs whose mount namespace is ``ns`` (a readlink of /proc/PID/ns/mnt)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.readlink(p / "ns" / "mnt") == ns:
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


def _naming(marker: str) -> list[int]:
    """PIDs whose command line contains ``marker`` (a node's unique temp dir)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if marker in (p / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


@dataclass
class Node:
    """One Ray node: its ``ray start --block`` process and how to find all of its processes."""

    name: str
    proc: subprocess.Popen
    temp_dir: str
    namespace: str | None = None  # mount namespace of a worker node
    log: Path | None = None
    started: float = field(default_factory=time.time)
    ports: dict = field(default_factory=dict)  # agent_ports() given to its ``ray start``

    def processes(self) -> list[int]:
        """Every live process of this node (leader, process group, descendants, namespace)."""
        roots = {self.proc.pid}
        if self.namespace:
            roots |= set(_in_namespace(self.namespace))
        else:
            roots |= set(_naming(self.temp_dir))
        kids, found, stack = _children(), set(), list(roots)
        while stack:
            pid = stack.pop()
            if pid not in found:
                found.add(pid)
                stack += kids.get(pid, [])
        return sorted(p for p in found if _alive(p))

    def _sessions(self) -> list[Path]:
        """Session folders this start made (a head started again reuses its temp dir). A
        worker's lie in its own mount namespace: reached through /proc/PID/root."""
        root = f"/proc/{self.proc.pid}/root" if self.namespace else ""
        out = []
        for d in Path(f"{root}{self.temp_dir}").glob("session_2*"):
            try:
                if d.stat().st_mtime >= self.started:
                    out.append(d)
            except OSError:
                continue
        return out

    def write_agent_ports(self) -> None:
        """Write the port files the raylet waits for, with the ports its agents were given.
        Ray 2.60's raylet aborts when its agents have not written them within a fixed ~15 s
        (no setting raises it), which agents importing on a busy machine miss; the agents
        bind those same ports when they are up."""
        from ray._raylet import persist_port
        for session in self._sessions():
            try:
                text = (session / "logs" / "raylet.out").read_text(errors="replace")
            except OSError:
                continue
            if m := re.search(r"Setting node ID node_id=([0-9a-f]{56})", text):
                for name, port in self.ports.items():
                    if not (session / f"{name}_{m[1]}").exists():
                        persist_port(str(session), m[1], name, port)

    def raylet_abort(self) -> str | None:
        """The raylet's fatal line (e.g. its agents missed Ray's fixed port-file wait), or None."""
        for session in self._sessions():
            try:
                text = (session / "logs" / "raylet.out").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "Check failed" in text:
                return text[text.index("Check failed"):][:400]
        return None

    def agents_listening(self) -> bool:
        """Whether something listens on every agent port given to this node (on any address:
        the runtime-env agent binds the machine's IP). Those ports were free when chosen, not
        reserved: an agent that loses its port to another process exits, and ``ray start
        --block`` with it, possibly after it reported the node started."""
        return set(self.ports.values()) <= _listening_ports()

    def kill(self, sig: int = signal.SIGKILL, timeout_s: float = 20.0) -> None:
        """Send ``sig`` to every process of the node, then SIGKILL what is left; wait until
        none is alive (a node lost with its machine)."""
        deadline = time.monotonic() + timeout_s
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        while True:
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig if time.monotonic() < deadline else signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.wait(5)


@dataclass
class LocalCluster:
    """A head plus worker nodes on 127.0.0.1 (see the module docstring). Use as a context
    manager, or ``start()`` / ``stop()``.

    private: paths hidden from every worker node (each gets its own empty tmpfs there), on
    top of the cluster's base folder. env: extra environment of every node. autoscaling: a
    ``fake_autoscaling_config``: the head's monitor then adds and removes worker nodes of its
    types on demand (local processes in the head's namespace, stopped with the head); these
    need no root, so ``num_workers=0`` with it runs anywhere.
    """

    num_workers: int = 2
    head_cpus: int = 0
    worker_cpus: int = 1
    worker_resources: dict = field(default_factory=dict)
    private: tuple = ()
    env: dict = field(default_factory=dict)
    head: Node | None = None
    workers: dict = field(default_factory=dict)
    base: str = ""
    port: int = 0
    dashboard_port: int = 0
    autoscaling: dict | None = None

    @property
    def address(self) -> str:
        """The GCS address: RAY_ADDRESS for drivers on this machine. (The head's address file,
        ``base/ray/ray_current_cluster``, names this machine's IP instead of 127.0.0.1.)"""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """The job server, for ``ray job submit --address``."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def node_env(self) -> dict:
        """Environment of every node and driver, with Ray's start-up waits raised."""
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
               "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               **STARTUP_WAITS, **self.env}
        env.pop("RAY_ADDRESS", None)
        return env

    def start(self, timeout_s: float = 600.0) -> "LocalCluster":
        # short: Ray's unix socket paths must stay under 108 bytes
        self.base = tempfile.mkdtemp(prefix="rdmn-", dir="/tmp")
        self.port, self.dashboard_port = free_port(), free_port()
        temp = f"{self.base}/ray"  # Ray's default temp dir for RAY_TMPDIR=base
        ports = agent_ports()
        cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--port={self.port}", f"--num-cpus={self.head_cpus}", "--num-gpus=0",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--ray-client-server-port={free_port()}", f"--temp-dir={temp}",
               "--disable-usage-stats", *port_args(ports)]
        head_env = {}
        if self.autoscaling is not None:
            config = Path(self.base) / "autoscaling.json"
            config.write_text(json.dumps({**self.autoscaling, "provider": {
                **self.autoscaling["provider"], "gcs_address": self.address}}))
            cmd.append(f"--autoscaling-config={config}")
            head_env = FAKE_AUTOSCALER_ENV
        try:
            for attempt in range(3):  # see add_worker
                self.head = self._spawn("head", cmd, temp, ports, namespace=False, env=head_env)
                try:
                    self._wait_started(self.head, timeout_s)
                    break
                except RuntimeError:
                    self.head.kill()
                    if attempt == 2:
                        raise
            for i in range(self.num_workers):  # one by one: a loaded machine starts them slowly
                self.add_worker(f"worker-{i}", timeout_s=timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self, name: str, num_cpus: int | None = None, resources: dict | None = None,
                   timeout_s: float = 600.0, attempts: int = 3) -> Node:
        """Start a worker node in its own mount namespace; return once it runs. A raylet that
        misses Ray's fixed 30 s registration window (a loaded machine) is started again."""
        for attempt in range(attempts):
            node = self._start_worker(name, num_cpus, resources)
            try:
                self._wait_started(node, timeout_s)
                return node
            except RuntimeError:
                self.workers.pop(name).kill()
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _start_worker(self, name: str, num_cpus: int | None, resources: dict | None) -> Node:
        temp, ports = f"{self.base}/{name}", agent_ports()
        ray_cmd = [RAY, "start", "--block", f"--address={self.address}",
                   "--node-ip-address=127.0.0.1",
                   f"--num-cpus={self.worker_cpus if num_cpus is None else num_cpus}",
                   "--num-gpus=0", f"--temp-dir={temp}", "--disable-usage-stats",
                   f"--resources={json.dumps({**self.worker_resources, **(resources or {})})}",
                   f"--object-manager-port={free_port()}", f"--node-manager-port={free_port()}",
                   *port_args(ports)]
        hide = [self.base, *map(str, self.private)]
        script = "set -e; " + "; ".join(
            f"mkdir -p {shlex.quote(p)}; mount -t tmpfs tmpfs {shlex.quote(p)}" for p in hide)
        script += f"; mkdir -p {shlex.quote(temp)}; exec {shlex.join(ray_cmd)}"
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        node = self._spawn(name, cmd, temp, ports, namespace=True)
        self.workers[name] = node
        return node

    def _spawn(self, name: str, cmd: list[str], temp: str, ports: dict[str, int],
               namespace: bool, env: dict | None = None) -> Node:
        log = Path(self.base) / f"{name}.log"
        proc = subprocess.Popen(cmd, env={**self.node_env(), **(env or {})}, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_boost if os.geteuid() == 0 else None)
        ns = None
        if namespace:  # the namespace exists once unshare has exec'ed sh (its ns differs)
            own = os.readlink("/proc/self/ns/mnt")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    ns = os.readlink(f"/proc/{proc.pid}/ns/mnt")
                except OSError:
                    ns = None
                if ns and ns != own:
                    break
                time.sleep(0.05)
            if not ns or ns == own:
                raise RuntimeError(f"{name}: unshare did not enter a new mount namespace; "
                                   f"log: {log.read_text()[-2000:]}")
        return Node(name, proc, temp, ns, log, ports=ports)

    def alive_nodes(self) -> list[dict]:
        """Ray's view of the live nodes, asked from a separate process (this one may already
        be connected to another cluster)."""
        code = ("import json, ray; ray.init(address=%r, log_to_driver=False, "
                "logging_level='ERROR'); print(json.dumps([{'id': n['NodeID'], 'resources': "
                "n['Resources']} for n in ray.nodes() if n['Alive']]))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], env=self.node_env(),
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"cannot list the nodes of {self.address}: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def _wait_started(self, node: Node, timeout_s: float) -> None:
        """Until ``node``'s ``ray start`` reports its runtime started and its agents listen;
        RuntimeError if it exits first (``ray start --block`` exits when an agent or the
        raylet dies) or its raylet aborted (``ray start`` itself notices that only after
        ``RAY_raylet_start_wait_time_s``), TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            node.write_agent_ports()
            if crash := node.raylet_abort():
                raise RuntimeError(f"{node.name}: its raylet aborted while starting: {crash}")
            if b"Ray runtime started" in node.log.read_bytes() and node.agents_listening():
                for pid in node.processes():  # started: back to the machine's normal priority
                    try:
                        os.setpriority(os.PRIO_PROCESS, pid, 0)
                    except OSError:
                        pass
                return
            if node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited ({node.proc.returncode}); log:\n"
                                   f"{node.log.read_text()[-3000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"{node.name} did not start within {timeout_s:.0f} s; its log: "
                           f"{node.log}")

    def worker_running(self, title: str) -> str | None:
        """The name of a worker node with a process whose command line (Ray sets it to
        ``ray::NAME`` for a task or actor) contains ``title``; None if none has one."""
        return next((name for name, node in self.workers.items() if _runs(node, title)), None)

    def head_running(self, title: str) -> bool:
        """Whether a process of the head node has ``title`` in its command line."""
        return _runs(self.head, title)

    def kill_worker(self, name: str) -> None:
        """SIGKILL every process of worker ``name`` (raylet, object store, workers)."""
        self.workers.pop(name).kill(signal.SIGKILL)

    def kill_head(self) -> None:
        """SIGKILL every process of the head (its address file stays, as in a real crash)."""
        self.head.kill(signal.SIGKILL)

    def stop(self) -> None:
        for node in list(self.workers.values()):
            node.kill(signal.SIGTERM)
        self.workers.clear()
        if self.head is not None:
            self.head.kill(signal.SIGTERM)
        if self.base:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2, help="worker nodes")
    p.add_argument("--worker-cpus", type=int, default=1)
    p.add_argument("--head-cpus", type=int, default=0)
    p.add_argument("--private", action="append", default=[],
                   help="a path every worker sees as an empty private folder (repeatable)")
    p.add_argument("--autoscale-from", metavar="CLUSTER_YAML",
                   help="also run Ray's fake autoscaler with this file's node types (e.g. "
                        "cluster.yaml: a GPU group from 0; --workers 0 for that alone)")
    p.add_argument("--autoscale-cpus", type=float, default=2.0,
                   help="CPUs of each autoscaled node (cap on the file's)")
    args = p.parse_args(argv)
    if args.workers and (reason := unavailable_reason()):
        print(f"error: cannot start a multi-node cluster here: {reason}", file=sys.stderr)
        return 2
    autoscaling = (fake_autoscaling_config(args.autoscale_from, worker_cpus=args.autoscale_cpus)
                   if args.autoscale_from else None)
    with LocalCluster(args.workers, args.head_cpus, args.worker_cpus,
                      private=tuple(args.private), autoscaling=autoscaling) as cluster:
        print(json.dumps({"address": cluster.address, "dashboard": cluster.dashboard_url,
                          "logs": cluster.base}), flush=True)
        print("Ctrl-C stops every node of this cluster (and nothing else)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
