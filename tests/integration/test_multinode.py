"""raydal on a cluster of several nodes that share no filesystem (raydal.testing.cluster).

One cluster for the module: a head with 0 CPUs (as cluster.yaml's) and 2 worker nodes on
127.0.0.1, each in its own mount namespace with a private tmpfs over pytest's temp folders, so
a worker cannot read the driver's files. The only storage all share is the moto S3 server on
127.0.0.1. Drivers run in subprocesses on the head (this pytest process may already be joined to
the session's one-node cluster). Needs root (mount namespaces): elsewhere these tests skip.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from raydal.fs import resolve
from raydal.labels import LabelLog
from raydal.storage import atomic_write_parquet, read_json, read_table
from raydal.testing.cluster import LocalCluster, unavailable_reason

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
RAYDAL = str(Path(sys.executable).parent / "raydal")
EXCLUDES = ["data/", "runs/", ".git/", "benchmarks/results/", ".pytest_cache/", "**/__pycache__/",
            "*.egg-info/", ".venv/", "venv/"]
_reason = unavailable_reason()
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(_reason is not None, reason=f"multi-node cluster: {_reason}")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (0 CPUs) + 2 workers (1 CPU each), pytest's temp root private to each."""
    private = (str(tmp_path_factory.getbasetemp()),)
    t0 = time.monotonic()
    with LocalCluster(num_workers=2, worker_cpus=1, private=private) as c:
        print(f"multi-node cluster up in {time.monotonic() - t0:.1f} s")
        yield c


@pytest.fixture(scope="module")
def worker_ids(cluster) -> set[str]:
    return {n["id"] for n in cluster.alive_nodes() if n["resources"].get("CPU", 0) > 0}


@pytest.fixture(scope="module")
def s3_data(s3_server, fashion_mnist) -> dict:
    """600 pool rows, their truth and 200 test rows of Fashion-MNIST on S3; for selections
    alone a 4000-row pool, 20 labels of it and a random-init checkpoint."""
    from raydal.models import ModelSpec, create_model, save_checkpoint
    import pyarrow.fs as pafs
    bucket = f"raydal-mn-{os.getpid()}"
    pafs.S3FileSystem(access_key="testing", secret_key="testing", endpoint_override=s3_server,
                      scheme="http", region="us-east-1",
                      allow_bucket_creation=True).create_dir(bucket)
    uri = (f"s3://testing:testing@{bucket}?endpoint_override={s3_server}&scheme=http"
           f"&region=us-east-1")
    root = resolve(uri)
    pool = pq.read_table(fashion_mnist / "pool.parquet").slice(0, 600)
    truth = truth_of(fashion_mnist, pool.column("id").to_pylist())
    out = {"root": uri}
    for name, table in (("pool", pool), ("truth", truth),
                        ("test", pq.read_table(fashion_mnist / "test.parquet").slice(0, 200))):
        out[name] = str(atomic_write_parquet(root / "data" / f"{name}.parquet", table))
    big = pq.read_table(fashion_mnist / "pool.parquet").slice(1000, 4000)
    out["big_pool"] = str(atomic_write_parquet(root / "data" / "big_pool.parquet", big))
    first = big.slice(0, 20).column("id").to_pylist()
    labels = truth_of(fashion_mnist, first)
    out["big_labels"] = str(atomic_write_parquet(root / "data" / "big_labels.parquet", labels))
    spec = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=32)
    out["ckpt"] = str(save_checkpoint(create_model(spec, seed=0).eval(), spec, root / "ckpt"))
    return out


def truth_of(fashion_mnist: Path, ids: list[str]):
    truth = pq.read_table(fashion_mnist / "truth.parquet")
    keep = set(ids)
    return truth.filter([i in keep for i in truth.column("id").to_pylist()])


def loop_config(s3_data: dict, run_dir: str) -> dict:
    return {
        "name": "multinode", "seed": 2, "run_dir": run_dir, "progress": False,
        "data": {"dataset": None, "num_classes": 10, "pool": s3_data["pool"],
                 "truth": s3_data["truth"], "test": s3_data["test"]},
        "model": {"name": "test_resnet", "in_chans": 1, "img_size": 32},
        "strategy": {"name": "dynamicAL"},
        "loop": {"initial": 20, "per_round": 20, "rounds": 2},
        "selection": {"num_actors": 2, "batch_size": 64, "num_cpus_per_actor": 0.5},
        "training": {"epochs": 1, "batch_size": 32},
    }


def _driver(cluster, *args, timeout=300, **kw) -> subprocess.CompletedProcess:
    """A driver process on the head (this machine's namespace) joined to ``cluster``."""
    env = {**cluster.node_env(), "RAY_ADDRESS": cluster.address}
    return subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, **kw)


def test_worker_nodes_share_no_files(cluster, worker_ids, tmp_path):
    """The fixture itself: a file on the head is invisible on each worker node, and a file one
    worker writes at a path is invisible on the other."""
    mine = tmp_path / "driver-file"
    mine.write_text("x")
    theirs = tmp_path / "written-by-a-worker"
    code = f"""
import json, os, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
ray.init(logging_level="ERROR")
@ray.remote(num_cpus=0)
def probe(write):
    if write:  # the folder exists in no worker's private tmpfs until made there
        os.makedirs(os.path.dirname({str(theirs)!r}), exist_ok=True)
        open({str(theirs)!r}, "w").write("y")
    return (ray.get_runtime_context().get_node_id(), os.path.exists({str(mine)!r}),
            os.path.exists({str(theirs)!r}))
a, b = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU"))
def run(node, write):
    return ray.get(probe.options(scheduling_strategy=On(node, soft=False)).remote(write))
print(json.dumps([run(a, True), run(b, False), run(a, False)]))
"""
    res = _driver(cluster, sys.executable, "-c", code)
    assert res.returncode == 0, res.stderr[-3000:]
    (a, a_mine, _), (b, b_mine, b_theirs), (_, _, a_theirs) = json.loads(
        res.stdout.strip().splitlines()[-1])
    assert {a, b} == worker_ids and len(worker_ids) == 2
    assert not a_mine and not b_mine  # the driver's file: on no worker node
    assert a_theirs and not b_theirs  # worker a's file: on a only
    assert not theirs.exists()  # nor on the head


def test_local_run_dir_is_refused_before_any_work(cluster, s3_data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = tmp_path / "local.yaml"
    cfg.write_text(yaml.safe_dump(loop_config(s3_data, str(run_dir))))
    t0 = time.monotonic()
    res = _driver(cluster, RAYDAL, "run", str(cfg), "--no-progress", timeout=900)
    took = time.monotonic() - t0
    print(f"local run_dir refused after {took:.1f} s")
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    msg = res.stderr
    assert f"run_dir {run_dir} is a local path that 2 of 2 worker nodes cannot read" in msg, msg
    assert "s3://" in msg and "same path on every node" in msg
    assert not (run_dir / "selections").exists() and not (run_dir / "labels").exists()
    assert not list(run_dir.glob(".raydal-shared-*"))  # the probe token is removed


def _submit(cluster, entrypoint: list[str], job_id: str, timeout_s: float = 600) -> str:
    """``ray job submit`` to the head's job server; returns the job's logs once it ended."""
    env = {**cluster.node_env(), "RAY_ADDRESS": cluster.dashboard_url}
    runtime_env = {"excludes": EXCLUDES,
                   "env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1"}}
    cmd = [RAY, "job", "submit", "--submission-id", job_id, "--working-dir", ".",
           "--runtime-env-json", json.dumps(runtime_env), "--no-wait", "--", *entrypoint]
    deadline = time.monotonic() + 60
    while True:  # the job agent answers "No available agent" for a while after the head starts
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
        if res.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    status, deadline = "", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run([RAY, "job", "status", job_id], env=env, capture_output=True,
                             text=True, timeout=60)
        text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
        if m := re.search(r"(succeeded|failed|was stopped)", text):
            status = m[1]
            break
        time.sleep(2)
    logs = subprocess.run([RAY, "job", "logs", job_id], env=env, capture_output=True,
                          text=True, timeout=60).stdout
    assert status == "succeeded", f"job {status or 'timed out'}:\n{logs[-5000:]}"
    return logs


def test_loop_job_on_s3_runs_on_the_worker_nodes_and_matches_one_node(
        cluster, worker_ids, s3_data, tmp_path, ray_cluster):
    from raydal.config import parse_config
    from raydal.loop import ActiveLoop
    run_dir = resolve(s3_data["root"]) / "runs" / "multinode"
    cfg = tmp_path / "s3.yaml"  # on the head's disk: the job's driver runs there
    cfg.write_text(yaml.safe_dump(loop_config(s3_data, str(run_dir))))
    t0 = time.monotonic()
    logs = _submit(cluster, ["python", "jobs/run_loop.py", str(cfg)], f"mn-loop-{os.getpid()}")
    job_s = time.monotonic() - t0
    summary = json.loads([line for line in logs.splitlines() if line.startswith("{")][-1])
    assert summary["rounds"] == 3  # rounds 0, 1, 2 trained

    for r in (1, 2):  # selections: the scoring actors ran on worker nodes only
        sel = read_json(run_dir / "selections" / f"round-{r:04d}.json")
        assert sel["nodes"] and set(sel["nodes"]) <= worker_ids, (sel["nodes"], worker_ids)
    for r in (0, 1, 2):
        meta = read_json(run_dir / "checkpoints" / f"round-{r:04d}" / "meta.json")
        assert meta["nodes"] and set(meta["nodes"]) <= worker_ids, (meta["nodes"], worker_ids)
    multi = LabelLog(run_dir / "labels").table()

    # The same config on one node (the session's local cluster), its run dir on S3 too.
    t1 = time.monotonic()
    one_dir = resolve(s3_data["root"]) / "runs" / "one-node"
    ActiveLoop.from_config(parse_config(loop_config(s3_data, str(one_dir)))).run()
    one_s = time.monotonic() - t1
    one = LabelLog(one_dir / "labels").table()
    print(f"loop job on 2 worker nodes {job_s:.1f} s; same loop on one node {one_s:.1f} s")
    assert multi.select(["id", "label", "round"]).equals(one.select(["id", "label", "round"]))
    assert len(set(multi.column("id").to_pylist())) == 60


def test_worker_node_lost_mid_selection_gives_the_fault_free_picks(cluster, s3_data, tmp_path):
    """SIGKILL a whole worker node (raylet, object store, workers) once scoring has started:
    the selection finishes on the survivor with the picks of the run without a fault."""
    common = ["--pool", s3_data["big_pool"], "--strategy", "dynamicAL", "--budget", "50",
              "--labels", s3_data["big_labels"], "--checkpoint", s3_data["ckpt"],
              "--num-actors", "2", "--batch-size", "32", "--num-cpus-per-actor", "0.5"]
    clean = tmp_path / "clean.parquet"
    res = _driver(cluster, sys.executable, "jobs/select_round.py", *common, "--out", str(clean))
    assert res.returncode == 0, res.stderr[-3000:]

    faulty = tmp_path / "faulty.parquet"
    env = {**cluster.node_env(), "RAY_ADDRESS": cluster.address}
    proc = subprocess.Popen([sys.executable, "jobs/select_round.py", *common, "--progress",
                             "--out", str(faulty)], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err: list[str] = []
    scored = threading.Event()

    def follow() -> None:
        buf = ""
        while ch := proc.stderr.read(1):
            buf += ch
            if ch in "\r\n":
                err.append(buf)
                if re.search(r"scoring \(\w+\):.*?\|\s*[1-9]\d*/\d+", buf):
                    scored.set()
                buf = ""
    reader = threading.Thread(target=follow, daemon=True)  # the only reader of stderr
    reader.start()
    assert scored.wait(240), "".join(err)[-3000:]
    deadline = time.monotonic() + 60  # between blocks a scoring process is ray::IDLE
    while (victim := cluster.worker_running("score_block")) is None:
        assert time.monotonic() < deadline, "no worker node runs a scoring task"
        time.sleep(0.05)
    cluster.kill_worker(victim)
    proc.wait(timeout=300)
    reader.join(timeout=30)
    _replace_lost_worker(cluster, victim)
    assert proc.returncode == 0, "".join(err)[-3000:]
    assert read_table(faulty).equals(read_table(clean))


def _replace_lost_worker(cluster, lost: str) -> None:
    """Start a fresh worker node for the next test (a cloud autoscaler would). Short names:
    a node's Ray socket paths live under its name and must stay under 108 bytes."""
    cluster.add_worker(f"r{next(_replacements)}")


_replacements = itertools.count()


def test_worker_node_lost_mid_training_resumes_on_the_other_node(cluster, s3_data):
    """SIGKILL the worker node that trains once epoch 1's checkpoint is on S3: training
    restarts on the other node from that checkpoint; the round's labels are all kept."""
    run_dir = resolve(s3_data["root"]) / "runs" / "train-node-loss"
    cfg = loop_config(s3_data, str(run_dir))
    cfg["loop"].update(initial=500, rounds=0)
    cfg["training"].update(epochs=6, checkpoint_every=1, max_failures=1)
    path = Path(cluster.base) / "train-loss.yaml"  # the head's disk, where the driver runs
    path.write_text(yaml.safe_dump(cfg))
    env = {**cluster.node_env(), "RAY_ADDRESS": cluster.address}
    proc = subprocess.Popen([RAYDAL, "run", str(path), "--no-progress"], env=env, cwd=ROOT,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 400
    while not any(f.path.endswith("epoch-0001/meta.json")
                  for f in (run_dir / "ray_train").files(recursive=True)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.5)
    workers = {n["id"] for n in cluster.alive_nodes() if n["resources"].get("CPU", 0) > 0}
    victim = cluster.worker_running("_fit_in_task")
    assert victim is not None, "no worker node runs the training task"
    cluster.kill_worker(victim)
    out, _ = proc.communicate(timeout=400)
    _replace_lost_worker(cluster, victim)
    assert proc.returncode == 0, out[-3000:]
    meta = read_json(run_dir / "checkpoints" / "round-0000" / "meta.json")
    assert len(set(meta["nodes"])) == 2 and set(meta["nodes"]) <= workers, (meta, workers)
    assert meta["metrics"]["resumed_from_epoch"] >= 1, meta
    ids = LabelLog(run_dir / "labels").table().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 500
