"""Can the cluster run this? Actors' and trainers' requests checked against its nodes, up front.

Ray waits forever, silently, for an actor it cannot place (64 scoring actors on a 2-CPU
machine; scoring actors that leave no CPU for Ray Data's read tasks). ``ensure_schedulable``
refuses such a request in seconds, with the numbers; with ``wait_s`` (an autoscaling cluster
that adds nodes on demand) it asks the autoscaler for them and waits at most that long,
logging progress, before it refuses.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from raydal.errors import ResourceError

log = logging.getLogger("raydal")

#: CPUs that Ray Data's read tasks (fused pipeline) or a decode task (staged pipeline) need
#: beside the scorers: one task at a time at least; more run on whatever CPUs are free.
READ_TASK_CPUS = 1.0
DECODE_TASK_CPUS = 1.0


@dataclass(frozen=True)
class Demand:
    """``count`` bundles of (cpus, gpus) placed at once, plus ``spare_cpus`` free on one node.

    what: the config fields that set it, for the message (``selection.num_actors=64 ...``).
    """

    what: str
    count: int
    cpus: float
    gpus: float = 0.0
    spare_cpus: float = 0.0

    @property
    def total_cpus(self) -> float:
        return self.count * self.cpus + self.spare_cpus


def selection_demand(num_actors: int, cpus_per_actor: float, gpus_per_actor: float,
                     pipeline: str = "fused") -> Demand:
    """The scorers plus one CPU task beside them: Ray Data's read tasks when the scorers decode
    (``pipeline`` "fused"), a decode task (which also reads) when they do not ("staged")."""
    spare, what = ((DECODE_TASK_CPUS, "a decode task (more run on free CPUs)")
                   if pipeline == "staged" else (READ_TASK_CPUS, "Ray Data's read tasks"))
    return Demand(f"selection.num_actors={num_actors} x (num_cpus_per_actor={cpus_per_actor:g}"
                  f", num_gpus_per_actor={gpus_per_actor:g}) + {spare:g} CPU for {what}",
                  num_actors, cpus_per_actor, gpus_per_actor, spare)


def training_demand(num_workers: int, cpus_per_worker: float, use_gpu: bool) -> Demand:
    return Demand(f"training.num_workers={num_workers} x (cpus_per_worker={cpus_per_worker:g}"
                  f"{', 1 GPU' if use_gpu else ''})", num_workers, cpus_per_worker,
                  1.0 if use_gpu else 0.0)


def _place(nodes: list[list[float]], d: Demand) -> bool:
    """Best fit of ``d.count`` bundles onto ``nodes`` ([free CPU, free GPU], changed in place)."""
    for _ in range(d.count):
        fits = [n for n in nodes if n[0] + 1e-9 >= d.cpus and n[1] + 1e-9 >= d.gpus]
        if not fits:
            return False
        best = min(fits, key=lambda n: (n[1] - d.gpus, n[0] - d.cpus))
        best[0] -= d.cpus
        best[1] -= d.gpus
    return True


def fits(nodes: list[dict[str, float]], d: Demand) -> bool:
    """Whether ``d`` can be placed on ``nodes`` (each a dict with CPU and GPU totals). Pure."""
    for spare_on in range(len(nodes)):  # the spare CPU on each node in turn, then the bundles
        free = [[n.get("CPU", 0.0), n.get("GPU", 0.0)] for n in nodes]
        if free[spare_on][0] + 1e-9 < d.spare_cpus:
            continue
        free[spare_on][0] -= d.spare_cpus
        if _place(free, d):
            return True
    return False


def describe(nodes: list[dict[str, float]]) -> str:
    """'2 nodes: 16 CPU 1 GPU, 4 CPU' (for messages)."""
    def one(n):
        return " ".join(f"{n.get(k, 0.0):g} {k}" for k in ("CPU", "GPU") if n.get(k) or k == "CPU")
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: {', '.join(map(one, nodes))}"


def _alive_nodes() -> list[dict[str, float]]:
    import ray
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def _refusal(d: Demand, nodes: list[dict[str, float]], waited: float) -> ResourceError:
    how = (f"after waiting {waited:.0f}s for the cluster to grow" if waited
           else "so Ray would wait forever")
    return ResourceError(
        f"the cluster cannot place {d.what}: {d.total_cpus:g} CPU"
        f"{f', {d.count * d.gpus:g} GPU' if d.gpus else ''} in all, {d.cpus:g} CPU"
        f"{f' + {d.gpus:g} GPU' if d.gpus else ''} on one node for each; it has "
        f"{describe(nodes)} ({how}). Lower those settings, add nodes, or on an autoscaling "
        "cluster set ray.resource_wait_s to wait for new nodes")


def ensure_schedulable(demands: list[Demand], wait_s: float = 0.0, poll_s: float = 2.0,
                       keep_request: bool = False) -> bool:
    """Return once every demand fits the cluster's alive nodes; ResourceError if it does not
    (at once with ``wait_s`` 0, else after asking the autoscaler and waiting ``wait_s`` s).
    Returns whether the autoscaler was asked; its request is withdrawn on return (it would keep
    those nodes up forever) unless ``keep_request``: then ``withdraw_request()`` it."""
    t0 = time.monotonic()
    asked = False
    last_note = t0
    while True:
        nodes = _alive_nodes()
        short = [d for d in demands if not fits(nodes, d)]
        if not short:
            if asked and not keep_request:
                withdraw_request()
            return asked
        waited = time.monotonic() - t0
        if waited >= wait_s:
            raise _refusal(short[0], nodes, waited)
        if not asked:  # an autoscaler adds nodes for these bundles; elsewhere a no-op
            from ray.autoscaler.sdk import request_resources
            request_resources(bundles=[b for d in short for b in [
                {"CPU": d.cpus, **({"GPU": d.gpus} if d.gpus else {})}] * d.count])
            asked = True
        if time.monotonic() - last_note >= 10 or waited == 0:
            log.warning("waiting for the cluster to place %s (%s now; %.0fs of %.0fs)",
                        short[0].what, describe(nodes), waited, wait_s)
            last_note = time.monotonic()
        time.sleep(min(poll_s, max(0.0, wait_s - waited)))


def withdraw_request() -> None:
    """Let the autoscaler remove idle nodes again (``ensure_schedulable``'s request ends)."""
    from ray.autoscaler.sdk import request_resources
    request_resources(bundles=[])


@contextmanager
def schedulable(demands: list[Demand], wait_s: float = 0.0) -> Iterator[None]:
    """``ensure_schedulable``, with any request to the autoscaler kept for the with-block: the
    nodes it brought up are idle until the work lands on them, and an autoscaler removes idle
    nodes (after 15 s in the autoscaling test, 5 min in cluster.yaml)."""
    asked = ensure_schedulable(demands, wait_s, keep_request=True)
    try:
        yield
    finally:
        if asked:
            withdraw_request()
