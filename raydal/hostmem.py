"""Host memory: keep large freed blocks for reuse in the processes that score and train.

glibc serves every allocation over 32 MiB with a fresh ``mmap`` and unmaps it when it is freed,
so each batch touches new pages again (a page fault and a zero fill per 4 KiB). On a CPU a
resnet50 at 224 px allocates such temporaries by the hundred a batch (per-sample gradients,
patches, activations kept for the backward pass): a 51 MB multiply-and-sum took 15.5 ms with
fresh pages and 5.5 ms with reused ones, and a scoring call 2.7 s against 2.2 s (2-core CPU,
2026-12-05; ``docs/benchmarks.md``). Raising glibc's mmap and trim thresholds keeps freed blocks
in the heap, where the next batch of the same shapes reuses them: the process holds on to its
peak, which it reaches again every batch anyway."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

#: blocks up to this size come from the heap and stay there when freed (bytes)
KEEP_BYTES = 2**30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache
def keep_freed_blocks() -> bool:
    """Set glibc's mmap and trim thresholds to ``KEEP_BYTES`` for this process, once. Returns
    whether they were set (False off Linux or with another C library: nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                           KEEP_BYTES))
