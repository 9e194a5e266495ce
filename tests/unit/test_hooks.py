"""raydal.hooks: a point is a no-op without hooks; hooks come from registered() and RAYDAL_HOOKS;
raydal.testing.faults kills a real process at a chosen point."""
import os
import signal
import subprocess
import sys

import pytest

from raydal import hooks
from raydal.testing.faults import kill_at_env


def _child(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_registered_hooks_see_points_only_inside_the_block():
    seen = []

    def hook(name, **info):
        seen.append((name, info))

    hooks.point("before")
    with hooks.registered(hook, hook):
        hooks.point("epoch-end", rank=0, epoch=2)
        assert hooks.current().count(hook) == 1
    hooks.point("after")
    assert seen == [("epoch-end", {"rank": 0, "epoch": 2})]
    assert hook not in hooks.current()


def test_fault_hook_from_the_environment_kills_the_process_at_its_point_only():
    code = ("from raydal import hooks; hooks.point('select-1'); print('passed select-1', "
            "flush=True); hooks.point('label-1'); print('not reached')")
    out = _child(code, kill_at_env("label-1"))
    assert out.returncode == -signal.SIGKILL
    assert out.stdout == "passed select-1\n"
    assert _child(code, {}).stdout.splitlines() == ["passed select-1", "not reached"]


def test_a_malformed_hook_spec_names_the_variable_and_the_form():
    out = _child("from raydal import hooks; hooks.point('x')",
                 {hooks.HOOKS_ENV: "raydal.testing.faults"})
    assert out.returncode == 1
    assert "RAYDAL_HOOKS='raydal.testing.faults': expected module:callable" in out.stderr


@pytest.mark.parametrize("module", ["raydal.storage", "raydal.train", "raydal.loop"])
def test_library_modules_carry_no_fault_injection(module):
    import importlib
    import inspect
    source = inspect.getsource(importlib.import_module(module))
    assert "RAYDAL_FAULT" not in source and "os.kill" not in source and "_exit(" not in source


def test_worker_dies_once_fires_only_at_its_rank_and_epoch(tmp_path):
    marker = tmp_path / "died"
    code = ("import sys; from raydal import hooks; from raydal.testing.faults import "
            f"worker_dies_once as w; h = w({str(marker)!r}, epoch=2, rank=0)\n"
            "with hooks.registered(h):\n"
            "    for rank, epoch in [(1, 2), (0, 1), (0, 3), (0, 2)]:\n"
            "        print(rank, epoch, flush=True); hooks.point('epoch-end', rank=rank, epoch=epoch)\n"
            "print('survived')")
    out = _child(code, {})
    assert out.returncode == 1 and marker.exists(), out.stderr
    assert out.stdout.splitlines() == ["1 2", "0 1", "0 3", "0 2"]
    assert _child(code, {}).stdout.endswith("survived\n")  # once: the marker is there
