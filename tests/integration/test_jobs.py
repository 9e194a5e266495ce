"""jobs/select_round.py submitted with ``ray job submit`` to a head started here, on loopback.

The head is a separate ``ray start`` (raydal.testing.cluster: own --temp-dir, own ports,
RAY_AUTH_MODE=disabled), never the session's ``ray_cluster``: this test calls no ``ray.init`` in
the pytest process, and stops only the processes of its own head (``ray stop`` would stop every
Ray on the machine).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydal.testing.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
#: Never uploaded with the working dir: large or machine-local.
EXCLUDES = ["data/", "runs/", ".git/", "benchmarks/results/", ".pytest_cache/", "**/__pycache__/",
            "*.egg-info/", ".venv/", "venv/"]


@pytest.fixture
def ray_head():
    """A Ray head on 127.0.0.1 with a dashboard (job server) on 127.0.0.1; yields (address, env)."""
    with LocalCluster(num_workers=0, head_cpus=2) as head:
        yield head.dashboard_url, head.node_env()


def _make_inputs(tmp: Path) -> dict:
    """A 240-image pool, a test_resnet checkpoint and a run dir with 20 labels (round 0)."""
    import raydal
    from raydal.labels import LabelLog
    from raydal.models import ModelSpec

    images = np.random.default_rng(0).integers(0, 256, (240, 28, 28), dtype=np.uint8)
    pool = raydal.Pool.from_numpy(images, path=tmp / "pool.parquet")
    spec = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=32)
    ckpt = raydal.save_checkpoint(raydal.create_model(spec, seed=0), spec, tmp / "ckpt")
    labeled = {f"{i:08d}": i % 10 for i in range(20)}
    LabelLog(tmp / "run" / "labels").append(0, labeled, source="test", num_classes=10)
    return {"pool": pool.path, "ckpt": str(ckpt), "run": str(tmp / "run"), "labeled": labeled}


def _ray(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def _job_status(env: dict, address: str, job_id: str) -> str:
    """PENDING/RUNNING/SUCCEEDED/FAILED/STOPPED as reported by ``ray job status``."""
    res = _ray(env, "job", "status", "--address", address, "--log-color", "false", job_id)
    text = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout + res.stderr)
    if m := re.search(rf"Job '{re.escape(job_id)}' (succeeded|failed|was stopped)", text):
        return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[m[1]]
    m = re.search(rf"Status for job '{re.escape(job_id)}': (\w+)", text)
    return m[1] if m else ""


@pytest.mark.integration
def test_select_round_job(ray_head, tmp_path):
    address, env = ray_head
    inputs = _make_inputs(tmp_path)
    out = tmp_path / "selection.parquet"
    job_id = f"raydal-test-{os.getpid()}-{time.time_ns()}"
    runtime_env = {"excludes": EXCLUDES,
                   "env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1"}}
    submit = _ray(env, "job", "submit", "--address", address, "--submission-id", job_id,
                  "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env),
                  "--no-wait", "--",
                  sys.executable, "jobs/select_round.py", "--pool", inputs["pool"],
                  "--checkpoint", inputs["ckpt"], "--strategy", "dynamicAL",
                  "--budget", "16", "--labels", inputs["run"], "--out", str(out),
                  "--num-actors", "1", "--batch-size", "64")
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]

    status, deadline = "", time.monotonic() + 150
    while time.monotonic() < deadline:
        status = _job_status(env, address, job_id)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(1.0)
    logs = _ray(env, "job", "logs", "--address", address, job_id).stdout
    assert status == "SUCCEEDED", f"job ended as {status or 'TIMEOUT'}; logs:\n{logs[-5000:]}"

    summary = json.loads([line for line in logs.splitlines() if line.startswith("{")][-1])
    assert summary["num_selected"] == 16 and summary["num_labeled"] == 20
    assert summary["num_scored"] == 240 - 20
    table = pq.read_table(out)
    assert table.schema.names == ["id", "score", "rank"]
    assert table.schema.field("id").type == pa.string()
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 16
    assert not set(ids) & set(inputs["labeled"])           # never re-selects a labeled id
    scores = table.column("score").to_numpy()
    assert np.all(np.isfinite(scores)) and np.all(np.diff(scores) <= 0)  # best first
    assert table.column("rank").to_pylist() == list(range(16))
    assert not list(tmp_path.glob(".selection.parquet.*"))  # atomic write left no temp file
