"""Local paths on a cluster of many nodes: checked on every node before any work.

On one machine a local path is seen by the driver, the scoring actors and the trainers alike.
On a cluster it is seen everywhere only when it lies on a filesystem mounted at the same path on
every node (NFS, EFS); on a node's own disk, an actor on another node fails deep inside Ray Data
or Ray Train. So before any work, every node that can run work (CPU or GPU > 0, other than the
driver's own node) checks each local location with a zero-CPU task pinned to it: a folder
raydal writes to gets a token file that must be readable there, an input must exist there.
Object-store URIs (s3://, gs://) need no check. Nodes that join later (autoscaling) are not
checked. Results are cached per location and set of nodes.
"""
from __future__ import annotations

import os
import uuid

from raydal.errors import ConfigError
from raydal.fs import Location, Where, resolve

#: Seconds to wait for a node's answer (a cold node starts a Python worker first).
PROBE_TIMEOUT_S = 120.0
_checked: set[tuple[str, frozenset]] = set()


def _missing(paths: dict[str, tuple[str, bytes | None]]) -> list[str]:
    """On a node: the names whose path is absent (or holds another token)."""
    out = []
    for name, (path, token) in paths.items():
        try:
            if token is None:
                ok = os.path.exists(path)
            else:
                with open(path, "rb") as f:
                    ok = f.read() == token
        except OSError:
            ok = False
        if not ok:
            out.append(name)
    return out


def _work_nodes() -> list[dict]:
    """Alive nodes, other than the driver's, that can run tasks or actors."""
    import ray
    here = ray.get_runtime_context().get_node_id()
    return [n for n in ray.nodes() if n["Alive"] and n["NodeID"] != here
            and (n["Resources"].get("CPU", 0) > 0 or n["Resources"].get("GPU", 0) > 0)]


def check_shared(inputs: dict[str, Where | None] | None = None,
                 outputs: dict[str, Where | None] | None = None) -> None:
    """Raise ConfigError unless every local location is readable on every node doing work.

    inputs: name -> a file or folder that must exist on each node (a pool, a checkpoint).
    outputs: name -> a folder this driver writes to (a run directory); a token file is written
    there and read back on each node. Names are the config fields users set (``run_dir``).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from raydal.storage import atomic_write_bytes
    local = {k: resolve(v) for k, v in {**(inputs or {}), **(outputs or {})}.items()
             if v is not None and resolve(v).is_local}
    if not local or not ray.is_initialized():  # not joined yet: Ray will start a local one
        return
    nodes = _work_nodes()
    key_nodes = frozenset(n["NodeID"] for n in nodes)
    todo = {k: loc for k, loc in local.items() if (str(loc), key_nodes) not in _checked}
    if not nodes or not todo:
        return
    probes: dict[str, tuple[str, bytes | None]] = {}
    tokens: list[Location] = []
    for name, loc in todo.items():
        if name in (outputs or {}):
            token = uuid.uuid4().hex.encode()
            tokens.append(atomic_write_bytes(loc / f".raydal-shared-{token.decode()}", token))
            probes[name] = (tokens[-1].path, token)
        else:
            probes[name] = (loc.path, None)
    try:
        task = ray.remote(_missing)  # .options() returns a wrapper with no .options()
        refs = {n["NodeManagerAddress"] + " " + n["NodeID"][:8]: task.options(
            num_cpus=0, max_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(probes) for n in nodes}
        answers = dict(zip(refs, ray.get(list(refs.values()), timeout=PROBE_TIMEOUT_S)))
    finally:
        for t in tokens:
            t.delete()
    bad = {name: [node for node, miss in answers.items() if name in miss] for name in todo}
    bad = {name: where for name, where in bad.items() if where}
    if bad:
        name, where = next(iter(bad.items()))
        also = f" (also: {', '.join(sorted(bad)[1:])})" if len(bad) > 1 else ""
        raise ConfigError(
            f"{name} {todo[name]} is a local path that {len(where)} of {len(nodes)} worker "
            f"nodes cannot read (node {where[0]}){also}: this Ray cluster has "
            f"{len(nodes) + 1} nodes and no shared filesystem there. Put it on storage every "
            "node reads: an object-store URI (s3://bucket/prefix?region=..., gs://...; see the "
            "README's 'Pools and run directories on object stores') or a filesystem mounted at "
            "the same path on every node")
    _checked.update((str(loc), key_nodes) for loc in todo.values())
