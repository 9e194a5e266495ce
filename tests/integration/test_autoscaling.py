"""Scale from zero: a GPU selection on an autoscaling cluster built from cluster.yaml.

The head runs Ray's fake multi-node provider (``raydal.testing.cluster.fake_autoscaling_config``):
the node types of ``cluster.yaml`` (a 0-CPU head; ``gpu_worker`` with ``min_workers: 0``, 1 GPU
as a fake resource, CPUs capped to 2 for this machine), started as local processes when Ray asks
for them and removed after the idle timeout. A selection with ``num_gpus_per_actor: 1`` must
make the GPU group grow from 0 to the number of scorers (the selection waits for them and keeps
its request to the autoscaler until it ends, so none is removed as idle meanwhile), pick what
the CPU run picks, and the group must shrink back to 0. The driver runs in a subprocess (this
pytest process is joined to the session's one-node cluster). Needs no root: fake nodes share the
head's filesystem.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import raydal
from raydal.models import ModelSpec, create_model, save_checkpoint
from raydal.pool import Pool
from raydal.testing.cluster import LocalCluster, fake_autoscaling_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SPEC = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=32)
SCORERS = 2
IDLE_MINUTES = 0.25  # cluster.yaml says 5; a test cannot wait that long

# The driver records every GPU node alive from submit to the selection's end.
DRIVER = textwrap.dedent("""
    import json, sys, threading, time
    import ray
    import raydal
    address, pool, ckpt, labels, scorers = sys.argv[1:6]
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    gpu_ids = lambda: {n["NodeID"] for n in ray.nodes()
                       if n["Alive"] and n["Resources"].get("GPU", 0) > 0}
    before, seen, done = len(gpu_ids()), set(), threading.Event()
    def watch():
        while not done.wait(0.5):
            try:
                seen.update(gpu_ids())
            except Exception:  # a GCS call timed out on a loaded machine: look again
                pass
    threading.Thread(target=watch, daemon=True).start()
    t0 = time.perf_counter()
    sel = raydal.select(pool, ckpt, "dynamicAL", 15, json.load(open(labels)),
                        num_actors=int(scorers), num_gpus_per_actor=1, progress=False,
                        resource_wait_s=300)
    t_sel = time.perf_counter()
    done.set()
    seen.update(gpu_ids())
    print(json.dumps({"ids": sel.ids, "gpus_before": before, "gpu_nodes_seen": sorted(seen),
                      "first_block_s": sel.startup_seconds, "seconds": sel.seconds,
                      "submit_to_result_s": t_sel - t0, "nodes": sel.nodes}))
""")


@pytest.fixture(scope="module")
def autoscaling_cluster():
    config = fake_autoscaling_config(ROOT / "cluster.yaml", worker_cpus=2,
                                     idle_timeout_minutes=IDLE_MINUTES, max_workers=SCORERS)
    t0 = time.monotonic()
    with LocalCluster(num_workers=0, head_cpus=0, autoscaling=config) as c:
        print(f"autoscaling head up in {time.monotonic() - t0:.1f} s")
        yield c


def gpu_nodes(cluster) -> list[dict]:
    return [n for n in cluster.alive_nodes() if n["resources"].get("GPU", 0) > 0]


def test_gpu_selection_scales_the_group_from_zero_and_back(autoscaling_cluster, ray_cluster,
                                                           random_images, tmp_path):
    pool = Pool.from_numpy(random_images(400, seed=3), path=tmp_path / "pool.parquet")
    ckpt = save_checkpoint(create_model(SPEC, seed=0).eval(), SPEC, tmp_path / "ckpt")
    labels = {f"{i:08d}": i % 10 for i in range(0, 400, 20)}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    cpu = raydal.select(pool, ckpt, "dynamicAL", 15, labels, num_actors=2, progress=False)

    assert gpu_nodes(autoscaling_cluster) == []  # min_workers 0: nothing billed while idle
    out = subprocess.run([sys.executable, "-c", DRIVER, autoscaling_cluster.address,
                          str(pool.path), str(ckpt), str(tmp_path / "labels.json"),
                          str(SCORERS)],
                         env=autoscaling_cluster.node_env(), capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"cold GPU group: submit -> first scored block {got['first_block_s']:.1f} s, "
          f"selection {got['seconds']:.1f} s")
    assert got["gpus_before"] == 0 and len(got["gpu_nodes_seen"]) == SCORERS, got
    assert got["ids"] == cpu.ids  # the picks do not depend on where they were scored
    assert set(got["nodes"]) <= set(got["gpu_nodes_seen"]) and got["nodes"], got

    t0 = time.monotonic()  # idle: the group goes back to 0 after the idle timeout
    while gpu_nodes(autoscaling_cluster):
        assert time.monotonic() - t0 < IDLE_MINUTES * 60 + 300, "the GPU group did not scale down"
        time.sleep(5)
    print(f"GPU group back at 0 nodes {time.monotonic() - t0:.1f} s after the selection")
