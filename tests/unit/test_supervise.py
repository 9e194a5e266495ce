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
