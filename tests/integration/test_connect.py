"""Joining a cluster fails fast when it is gone, and a run whose head dies resumes elsewhere.

A real head (``ray start --head`` in its own process group, own temp dir and ports, via
raydal.testing.cluster) is SIGKILLed in the middle of a real ``raydal run``: the driver must exit
with a clear error, a rerun that finds only the dead head's address file must stop within 60 s
naming it, and a rerun on a live cluster must finish with every label bought before the kill
unchanged and none bought twice.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from raydal.connect import HEAD_LOST_EXIT, ClusterUnreachable, cluster_address, wait_reachable
from raydal.labels import LabelLog
from raydal.testing.cluster import LocalCluster, free_port

RAYDAL = str(Path(sys.executable).parent / "raydal")


def test_address_sources_in_rays_order(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) == (None, "no address given: a new local cluster")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.1.2.3:6379\n")
    addr, source = cluster_address(None)
    assert addr == "10.1.2.3:6379" and "last `ray start`" in source and str(tmp_path) in source
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:1234")
    assert cluster_address(None) == ("10.9.9.9:1234", "RAY_ADDRESS")
    assert cluster_address("127.0.0.1:5") == ("127.0.0.1:5", "ray.address")
    assert cluster_address("local") == (None, "ray.address")
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert cluster_address(None) == (None, "RAY_ADDRESS")


def test_closed_port_is_refused_naming_address_source_and_fix():
    port = free_port()  # bound, then closed: nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ClusterUnreachable) as err:
        wait_reachable(f"127.0.0.1:{port}", "RAY_ADDRESS", timeout_s=2)
    assert time.monotonic() - t0 < 10
    text = str(err.value)
    assert f"127.0.0.1:{port}" in text and "RAY_ADDRESS" in text
    assert "ray.address: local" in text and "ray start --head" in text


def _config(fashion_mnist, run_dir: Path, **ray) -> dict:
    return {
        "name": "connect", "seed": 3, "run_dir": str(run_dir), "progress": False,
        "data": {"dataset": "fashion-mnist", "prepared_dir": str(fashion_mnist),
                 "pool_subsample": 400, "test_subsample": 100},
        "model": {"name": "test_resnet", "in_chans": 1, "img_size": 32},
        "strategy": {"name": "entropy"},
        "loop": {"initial": 20, "per_round": 20, "rounds": 1},
        "selection": {"num_actors": 1, "batch_size": 128},
        "training": {"epochs": 2, "batch_size": 32},
        "ray": ray,
    }


def _run_timing_join(cmd: list[str], env: dict) -> tuple[int, str, float]:
    """Run ``cmd``; return (exit status, stderr, seconds from its "joining the Ray cluster"
    log line to its exit)."""
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    lines, joined = [], None
    for line in proc.stderr:
        lines.append(line)
        if joined is None and "joining the Ray cluster at" in line:
            joined = time.monotonic()
    rc = proc.wait(120)
    assert joined is not None, "".join(lines)[-3000:]
    return rc, "".join(lines), time.monotonic() - joined


def _phase(run_dir: Path) -> tuple[int, str] | None:
    import json
    try:
        state = json.loads((run_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return state["round"], state["phase"]


@pytest.mark.integration
def test_head_killed_mid_run_then_fail_fast_then_resume(ray_cluster, fashion_mnist, tmp_path):
    run_dir = tmp_path / "run"
    cfg_path = tmp_path / "config.yaml"
    cfg = _config(fashion_mnist, run_dir)
    # ~0.1 s an epoch here: 120 epochs keep round 0 training well past the kill, made once
    # its training task runs (with 2, a quiet machine once finished the whole run first)
    cfg["training"]["epochs"] = 120
    cfg_path.write_text(yaml.safe_dump(cfg))
    with LocalCluster(num_workers=0, head_cpus=2) as cluster:
        env = {**cluster.node_env(), "RAY_ADDRESS": cluster.address}
        driver = subprocess.Popen([RAYDAL, "run", str(cfg_path), "--no-progress"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while _phase(run_dir) != (0, "train") and driver.poll() is None:
            assert time.monotonic() < deadline, "the run never reached round 0's training"
            time.sleep(0.5)
        assert driver.poll() is None, (
            driver.communicate()[0][-3000:]
            + f"\nthe head's log:\n{cluster.head.log.read_text()[-2000:]}")
        labels_before = pq.read_table(run_dir / "labels" / "round-0000.parquet")
        while not cluster.head_running("_fit_in_task"):  # inside Ray Train: its task runs
            assert driver.poll() is None and time.monotonic() < deadline, \
                driver.communicate()[0][-3000:]
            time.sleep(0.2)
        cluster.kill_head()
        t_kill = time.monotonic()
        out, _ = driver.communicate(timeout=120)
        exit_s = time.monotonic() - t_kill
        leftover = Path(cluster.base) / "ray" / "ray_current_cluster"
        assert leftover.exists()  # what a crashed head leaves behind

        # The next run finds only that file (Ray's "last ray start" convention).
        stale_env = {**cluster.node_env(), "RAY_TMPDIR": cluster.base}
        stale_rc, stale_err, stale_s = _run_timing_join(
            [RAYDAL, "run", str(cfg_path), "--no-progress"], stale_env)
    print(f"driver exit {exit_s:.1f} s after the head's death (rc {driver.returncode}); "
          f"stale-address run refused after {stale_s:.1f} s")
    assert driver.returncode == HEAD_LOST_EXIT, out[-3000:]
    assert exit_s < 60
    assert f"error: the Ray head at {cluster.address} stopped answering" in out, out[-3000:]
    assert stale_rc == 2, stale_err[-3000:]
    assert stale_s < 60  # from the join attempt to the exit (imports on a loaded CI excluded)
    dead = leftover.read_text().strip() if leftover.exists() else None
    msg = stale_err
    assert "error: no Ray cluster answers at" in msg and "ray_current_cluster" in msg, msg
    assert "ray.address: local" in msg
    if dead:
        assert dead in msg

    # Resume on a live cluster: round 0's labels are kept byte for byte, none bought twice.
    resumed = subprocess.run([RAYDAL, "run", str(cfg_path), "--no-progress"],
                             env={**os.environ, "RAY_ADDRESS": ray_cluster},
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert pq.read_table(run_dir / "labels" / "round-0000.parquet").equals(labels_before)
    ids = LabelLog(run_dir / "labels").table().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 40
    assert _phase(run_dir) == (1, "done")


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="a driver in its own PID namespace needs root")
def test_driver_on_a_machine_without_a_node_is_told_to_run_on_the_head(fashion_mnist, tmp_path):
    """A driver that reaches the GCS but sees no raylet of the cluster (here: it runs in its own
    PID namespace, as on a laptop pointed at a remote head) gets one line and status 2, not
    Ray's traceback."""
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(fashion_mnist, tmp_path / "run")))
    with LocalCluster(num_workers=0) as cluster:
        env = {**cluster.node_env(), "RAY_ADDRESS": cluster.address,
               "RAY_gcs_server_request_timeout_seconds": "5"}  # Ray's lookup: 60 s by default
        out = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", RAYDAL, "run",
                              str(cfg_path), "--no-progress"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the Ray cluster at {cluster.address} (from RAY_ADDRESS) "
                           "answers, but none of its nodes runs on this machine"), out.stderr
    assert "ray job submit" in last and "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "labels").exists()
