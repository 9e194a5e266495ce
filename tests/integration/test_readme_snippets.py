"""The README's Python code blocks run as written, in a fresh process that never called
``ray.init()`` (raydal starts Ray itself, as Ray Data does)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_a_python_block():
    assert any("raydal.select(" in b for b in python_blocks())


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_block_runs_as_written(index, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_DATA_DISABLE_PROGRESS_BARS="1")
    done = subprocess.run([sys.executable, "-c", python_blocks()[index]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
