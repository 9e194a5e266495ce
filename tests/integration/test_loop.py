"""The whole loop on real Fashion-MNIST: uninterrupted, and killed mid-run then resumed."""
import json
import os
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from raydal.config import ConfigError, parse_config
from raydal.labels import LabelLog
from raydal.loop import ActiveLoop
from raydal.testing.faults import kill_at_env

pytestmark = pytest.mark.integration


def small_config(fashion_mnist, run_dir, **loop):
    """2 rounds (initial + 1 selection) on a 1.5k subset: the loop, only smaller."""
    return parse_config({
        "name": "test", "seed": 1, "run_dir": str(run_dir), "progress": False,
        "data": {"dataset": "fashion-mnist", "prepared_dir": str(fashion_mnist),
                 "pool_subsample": 1500, "test_subsample": 500},
        "model": {"name": "test_resnet", "in_chans": 1, "img_size": 32},
        "strategy": {"name": "dynamicAL"},
        "loop": {"initial": 40, "per_round": 30, "rounds": 1, **loop},
        "selection": {"num_actors": 2, "batch_size": 128},
        "training": {"epochs": 4, "batch_size": 32},
    })


@pytest.fixture(scope="module")
def finished_run(ray_cluster, fashion_mnist, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("loop") / "run"
    rows = ActiveLoop.from_config(small_config(fashion_mnist, run_dir)).run()
    return run_dir, rows


def test_two_round_loop_writes_every_record(finished_run):
    run_dir, rows = finished_run
    assert [r["round"] for r in rows] == [0, 1]
    assert [r["num_labeled"] for r in rows] == [40, 70]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    assert rows[1]["strategy"] == "dynamicAL" and rows[0]["strategy"] == "random"
    for r in rows:  # each phase's start-up is recorded, and is part of its time
        for phase in ("select", "train"):
            assert 0 < r["startup_seconds"][phase] <= r["seconds"][phase], (phase, r)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1]
    labels = LabelLog(run_dir / "labels").table()
    ids, rounds = labels.column("id").to_pylist(), labels.column("round").to_pylist()
    assert len(ids) == len(set(ids)) == 70
    sel = pq.read_table(run_dir / "selections" / "round-0001.parquet")
    assert sel.column("rank").to_pylist() == list(range(30))
    assert sorted(i for i, r in zip(ids, rounds) if r == 1) == sorted(sel.column("id").to_pylist())
    assert json.loads((run_dir / "state.json").read_text())["phase"] == "done"
    assert (run_dir / "checkpoints" / "round-0001" / "model.safetensors").exists()
    assert (run_dir / "report" / "learning_curve.png").stat().st_size > 1000


def test_rerunning_a_finished_run_changes_nothing(finished_run, fashion_mnist):
    run_dir, rows = finished_run
    before = {p: p.stat().st_mtime_ns for p in (run_dir / "labels").iterdir()}
    assert ActiveLoop.from_config(small_config(fashion_mnist, run_dir)).run() == rows
    assert before == {p: p.stat().st_mtime_ns for p in (run_dir / "labels").iterdir()}


def test_resume_refuses_a_different_config(finished_run, fashion_mnist):
    run_dir, _ = finished_run
    with pytest.raises(ConfigError, match="different loop.per_round"):
        ActiveLoop.from_config(small_config(fashion_mnist, run_dir, per_round=31)).run()


@pytest.mark.parametrize("phase", ["selected-0", "train-0-evaluating", "select-1",
                                   "selected-1", "label-1", "train-1"])
def test_driver_killed_in_any_phase_resumes_with_nothing_lost(
        ray_cluster, fashion_mnist, finished_run, tmp_path, phase):
    """SIGKILL a real driver process in a phase (right after round 0's random picks are
    written; after round 0 trained, while it is evaluated; in round 1: scored, selection
    written, labels bought, mid-training), resume, compare with a clean run: the same labels,
    the same picks in the same order and the same test accuracies (the run asked for)."""
    run_dir = tmp_path / "run"
    cfg = small_config(fashion_mnist, run_dir)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, **kill_at_env(phase)}
    driver = subprocess.run([sys.executable, "-m", "raydal.cli", "run", str(cfg_path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            timeout=400)
    assert driver.returncode == -signal.SIGKILL, driver.stderr.decode()[-3000:]
    target = run_dir / "selections" / "round-0001.parquet"
    selection = target.read_bytes() if target.exists() else None
    assert (selection is None) == (phase in ("selected-0", "train-0-evaluating", "select-1"))

    rows = ActiveLoop.from_config(cfg).run()  # resume in this process
    if selection is not None:
        assert target.read_bytes() == selection  # a written selection is reused, not redone
    labels = LabelLog(run_dir / "labels").table()
    ids = labels.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 70  # none lost, none twice
    round1 = [i for i, r in zip(ids, labels.column("round").to_pylist()) if r == 1]
    assert sorted(round1) == sorted(pq.read_table(target).column("id").to_pylist())
    # same seed, same data: the interrupted run bought exactly the uninterrupted run's labels
    ref_dir, ref_rows = finished_run
    assert sorted(ids) == sorted(LabelLog(ref_dir / "labels").table().column("id").to_pylist())
    assert [r["num_labeled"] for r in rows] == [r["num_labeled"] for r in ref_rows]
    ref_picks = pq.read_table(ref_dir / "selections" / "round-0001.parquet")
    assert pq.read_table(target).column("id").to_pylist() == ref_picks.column("id").to_pylist()
    assert [r["test_accuracy"] for r in rows] == [r["test_accuracy"] for r in ref_rows]
    assert not (run_dir / "ray_train").exists() or not any((run_dir / "ray_train").iterdir())


def test_a_deleted_earlier_label_file_is_refused_not_bought_again(finished_run, fashion_mnist,
                                                                  tmp_path):
    """Round 0's labels deleted after round 1 was built on them: refused, never re-bought."""
    import shutil
    from raydal.errors import RunDirError
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir)
    (run_dir / "labels" / "round-0000.parquet").unlink()
    (run_dir / "state.json").unlink()  # the check does not depend on the progress note
    with pytest.raises(RunDirError, match=r"lost the labels of round\(s\) \[0\].*restore"):
        ActiveLoop.from_config(small_config(fashion_mnist, run_dir)).run()
    assert LabelLog(run_dir / "labels").rounds() == [1]
