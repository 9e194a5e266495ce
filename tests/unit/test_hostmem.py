"""keep_freed_blocks: a large block freed and allocated again reuses its pages (no new faults)."""
import subprocess
import sys

import pytest

CHILD = r"""
import resource, sys, torch
from raydal.hostmem import keep_freed_blocks
if sys.argv[1] == "keep":
    assert keep_freed_blocks()
def faults():
    for _ in range(10):  # a 64 MiB float tensor, written, freed (glibc settles in a few rounds)
        torch.empty(16 * 2**20).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults())
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_large_block_is_reused_without_page_faults():
    pages = 64 * 2**20 // 4096
    assert _faults("default") > pages // 2  # glibc maps a fresh block: every page faults again
    assert _faults("keep") < pages // 50    # the freed block is reused as it is
