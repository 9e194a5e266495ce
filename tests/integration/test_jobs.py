"""jobs/select_round.py submitted with ``ray job submit`` to a head started here, on loopback.

The head is a separate ``ray start`` (own --temp-dir, own ports, RAY_AUTH_MODE=disabled), never
the session's ``ray_cluster``: this test calls no ``ray.init`` in the pytest process, and stops
only the processes of its own head (found by its unique temp dir; ``ray stop`` would stop every
Ray on the machine).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
#: Never uploaded with the working dir: large or machine-local.
EXCLUDES = ["data/", "runs/", ".git/", "benchmarks/results/", ".pytest_cache/", "**/__pycache__/",
            "*.egg-info/", ".venv/", "venv/"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _processes_of(marker: str) -> list[int]:
    """PIDs whose command line contains ``marker`` (our temp dir), and all their descendants."""
    roots = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if marker in (p / "cmdline").read_bytes().decode(errors="replace"):
                    roots.append(int(p.name))
            except OSError:
                continue
    kids, found, stack = _children(), set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack += kids.get(pid, [])
    return sorted(found)


def _kill_all(marker: str, grace_s: float = 10.0) -> None:
    """SIGTERM every process of our head, then SIGKILL what is left after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = _processes_of(marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()
                    and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1][:3]]
            time.sleep(0.2)
        if not pids:
            return


@pytest.fixture
def ray_head():
    """A Ray head on 127.0.0.1 with a dashboard (job server) on 127.0.0.1; yields (address, env)."""
    temp = tempfile.mkdtemp(prefix="rdjob-", dir="/tmp")  # short: unix socket paths are limited
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    dash = _free_port()
    cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
           "--num-gpus=0", f"--temp-dir={temp}", "--disable-usage-stats",
           f"--ray-client-server-port={_free_port()}",
           f"--dashboard-agent-listen-port={_free_port()}",
           f"--dashboard-agent-grpc-port={_free_port()}",
           f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}"]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"ray start failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _kill_all(temp)
        shutil.rmtree(temp, ignore_errors=True)


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
