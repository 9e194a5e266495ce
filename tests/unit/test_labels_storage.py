"""Atomic writes, the append-only label log, and the run-directory lock."""
import subprocess
import sys
import textwrap

import pytest

from raydal.labels import LabelError, LabelLog
from raydal.storage import RunDirLocked, atomic_write_bytes, atomic_write_parquet, run_dir_lock


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_bytes(path, b"old")
    with pytest.raises(AttributeError):
        atomic_write_parquet(path, "not a table")  # the writer fails mid-write
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_label_log_appends_rounds_and_refuses_duplicates(tmp_path):
    log = LabelLog(tmp_path / "labels")
    log.append(0, {"a": 1, "b": 0}, source="simulated", num_classes=3)
    log.append(1, {"c": 2}, source="simulated", num_classes=3)
    assert log.labels() == {"a": 1, "b": 0, "c": 2} and log.rounds() == [0, 1]
    assert log.table().column("round").to_pylist() == [0, 0, 1]
    with pytest.raises(LabelError, match="round 1 already exist"):
        log.append(1, {"d": 0}, source="x")
    with pytest.raises(LabelError, match="already labeled"):
        log.append(2, {"a": 1}, source="x")
    with pytest.raises(LabelError, match=r"expected an int in \[0, 3\)"):
        log.append(2, {"e": 3}, source="x", num_classes=3)
    assert not log.has_round(2) and log.labels() == {"a": 1, "b": 0, "c": 2}


def test_second_driver_is_refused_while_first_holds_the_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from raydal.storage import run_dir_lock
        with run_dir_lock({str(tmp_path)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match=f"in use by pid {holder.pid}"):
            with run_dir_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_dir_lock(tmp_path):  # a killed holder leaves no stale lock
        pass
