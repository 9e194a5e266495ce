"""``supervise``: a driver that Ray ends (status 1) because its head died gets a clear message
and status HEAD_LOST_EXIT; any other exit passes through unchanged. Real child processes and
real sockets."""
import socket
import sys

import pytest

from raydal.connect import HEAD_LOST_EXIT, SUPERVISED_ENV, supervise


def _exits(code: int) -> list[str]:
    return [sys.executable, "-c", f"import os, sys; assert os.environ['{SUPERVISED_ENV}']; "
                                  f"sys.exit({code})"]


@pytest.fixture
def closed_port():
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def open_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"127.0.0.1:{s.getsockname()[1]}"


def test_a_crash_with_the_head_gone_is_reported_as_head_lost(closed_port, capsys):
    assert supervise(_exits(1), closed_port) == HEAD_LOST_EXIT
    assert f"the Ray head at {closed_port} stopped answering" in capsys.readouterr().err


def test_a_crash_with_the_head_alive_keeps_its_status(open_port, capsys):
    assert supervise(_exits(1), open_port) == 1
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("code", [0, 2, 130, 143])
def test_success_user_errors_and_interrupts_pass_through(closed_port, code, capsys):
    assert supervise(_exits(code), closed_port) == code
    assert "stopped answering" not in capsys.readouterr().err


def test_a_killed_supervisor_takes_its_driver_with_it(closed_port, tmp_path):
    """SIGKILL of the supervisor (the process a user or a test kills) ends the child too:
    an orphaned driver would keep the run directory's lock."""
    import os
    import signal
    import subprocess
    import time
    pid_file = tmp_path / "child.pid"
    child_code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c",
                               "import sys; from raydal.connect import supervise; "
                               f"sys.exit(supervise([sys.executable, '-c', {child_code!r}], "
                               f"{closed_port!r}))"])
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    child = int(pid_file.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{child}") and "Z" not in _state(child):
        assert time.monotonic() < deadline, "the driver outlived its supervisor"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_raydal_run_dies_of_its_supervised_drivers_signal(closed_port, tmp_path):
    """`raydal run` joined to a head: a driver killed by SIGKILL makes the command itself end
    by SIGKILL (status -9 to a caller), not exit with a status number."""
    import os
    import subprocess
    import yaml
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"name": "t", "run_dir": str(tmp_path / "run"),
                                   "ray": {"address": closed_port},
                                   "data": {"pool": str(tmp_path / "pool.parquet"),
                                            "test": str(tmp_path / "test.parquet"),
                                            "truth": str(tmp_path / "truth.parquet"),
                                            "num_classes": 2}}))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONSTARTUP": ""}
    # the child (the real driver) kills itself before doing anything: sitecustomize runs first
    (tmp_path / "sitecustomize.py").write_text(
        "import os, signal\n"
        f"if os.environ.get({SUPERVISED_ENV!r}):\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    run = subprocess.run([sys.executable, "-m", "raydal.cli", "run", str(cfg)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == -9, run.stderr[-2000:]


@pytest.mark.parametrize("sig, code", [(2, 130), (15, 143)])
def test_sigint_and_sigterm_reach_the_driver_once(open_port, tmp_path, sig, code):
    """A signal sent to the supervisor's pid alone (as a job runner or a test sends it) reaches
    the driver, whose own handler decides the status."""
    import os
    import subprocess
    import time
    ready = tmp_path / "ready"
    child_code = ("import signal, sys, time, pathlib\n"
                  "hits = []\n"
                  "signal.signal(signal.SIGTERM, lambda *_: hits.append(1))\n"
                  "signal.signal(signal.SIGINT, lambda *_: hits.append(1))\n"
                  f"pathlib.Path({str(ready)!r}).touch()\n"
                  "while not hits: time.sleep(0.01)\n"
                  "time.sleep(0.5)\n"
                  f"sys.exit({code} if len(hits) == 1 else 99)\n")
    parent = subprocess.Popen([sys.executable, "-c",
                               "import sys; from raydal.connect import supervise; "
                               f"sys.exit(supervise([sys.executable, '-c', {child_code!r}], "
                               f"{open_port!r}))"])
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    os.kill(parent.pid, sig)
    assert parent.wait(timeout=60) == code
