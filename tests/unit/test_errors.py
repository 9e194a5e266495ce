"""One error hierarchy: every user error is a RaydalError, and the CLI prints it on one line."""
import subprocess
import sys

import pytest
import yaml

import raydal
from raydal.cli import main, user_error
from raydal.errors import (BadImage, ConfigError, FsError, LabelError, PoolError, RaydalError,
                           ResourceError, RunDirError, RunDirLocked, SelectionError, one_line)


def test_former_error_classes_are_the_hierarchy_and_keep_their_builtin_base():
    from raydal.config import ConfigError as C
    from raydal.fs import FsError as F
    from raydal.labels import LabelError as L
    from raydal.pool import PoolError as P
    from raydal.storage import RunDirLocked as R
    from raydal.transforms import BadImage as B
    assert (C, F, L, P, R, B) == (ConfigError, FsError, LabelError, PoolError, RunDirLocked,
                                  BadImage)
    for cls in (ConfigError, FsError, LabelError, PoolError, BadImage, SelectionError):
        assert issubclass(cls, RaydalError) and issubclass(cls, ValueError)
    for cls in (RunDirLocked, RunDirError, ResourceError):
        assert issubclass(cls, RaydalError) and issubclass(cls, RuntimeError)


def test_one_line_and_the_error_behind_a_ray_task_error():
    from ray.exceptions import RayTaskError
    assert one_line("invalid config:\n  a: x\n\n  b: y\n") == "invalid config:; a: x; b: y"
    cause = SelectionError("3 labels are not classes of the model")
    wrapped = RayTaskError("_prepare_context", "Traceback (most recent call last): ...",
                           cause).as_instanceof_cause()
    assert isinstance(wrapped, SelectionError) and str(wrapped) != str(cause)  # Ray's text
    assert user_error(wrapped) is cause
    assert user_error(KeyError("x")) is None  # a bug keeps its traceback


def test_version_flag():
    out = subprocess.run([sys.executable, "-m", "raydal.cli", "--version"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"raydal {raydal.__version__}"


def _run_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = {"run_dir": str(run_dir), "data": {"dataset": None, "pool": str(tmp_path / "p"),
                                              "test": str(tmp_path / "t"), "num_classes": 3,
                                              "truth": str(tmp_path / "y")}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run_dir


def test_status_on_a_corrupt_state_file_explains_and_goes_on(tmp_path, capsys):
    run_dir = _run_dir(tmp_path)
    (run_dir / "state.json").write_text('{"round": 1, "pha')
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr()
    assert "state.json is not a valid JSON record" in out.out and "labels: 0" in out.out
    assert "Traceback" not in out.err


@pytest.mark.parametrize("argv, fragment", [
    (["status", "{tmp}/nowhere"], "is not a raydal run directory"),             # RunDirError
    (["status", "ftp://host/run"], "ftp:// is not a pyarrow filesystem"),      # FsError
    (["run", "{tmp}/missing.yaml"], "config file"),                            # ConfigError
    (["import-labels", "{run}", "{tmp}/none.csv"], "no round of"),             # LabelError
])
def test_cli_user_errors_are_one_line_exit_2(tmp_path, capsys, argv, fragment):
    run_dir = _run_dir(tmp_path)
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_locked_run_dir_is_one_line(tmp_path, capsys):
    from raydal.storage import run_dir_lock
    run_dir = _run_dir(tmp_path)
    with run_dir_lock(run_dir):
        assert main(["import-labels", str(run_dir), str(tmp_path / "l.csv")]) == 2
    err = capsys.readouterr().err
    assert "is in use by pid" in err and err.count("\n") == 1
