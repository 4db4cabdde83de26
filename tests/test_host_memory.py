"""nf.train.host_memory against the kernel's own accounting (/proc/self/status)."""

import subprocess
import sys

import numpy as np
import pytest

from nf.train import host_memory

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")


@linux
def test_peak_follows_a_large_allocation_and_restarts_after_reset():
    assert host_memory.reset_peak_rss()
    before = host_memory.peak_rss_bytes()
    block = np.ones(256 * 2**20 // 8)  # 256 MiB, touched
    during = host_memory.peak_rss_bytes()
    assert during - before > 200 * 2**20
    del block
    assert host_memory.rss_bytes() < during - 200 * 2**20  # large blocks go back to the OS at free
    assert host_memory.peak_rss_bytes() > during - 2**20  # the peak remembers (per-thread counters lag a little)
    assert host_memory.reset_peak_rss()
    assert host_memory.peak_rss_bytes() < during - 200 * 2**20  # and restarts from the current RSS


# Runs in a fresh interpreter: in a long-lived process (JAX started, other tests' threads and
# arenas) glibc may place and return the blocks differently.
_TRIM_PROBE = """
import ctypes, sys
from nf.train import host_memory
if not host_memory.release_freed_memory():
    print("skip"); sys.exit()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
# 64 KiB blocks stay below glibc's mmap threshold, and a small block kept after each one stops
# free() from trimming the heap's top: freeing them leaves their pages in the process, the way
# a compiler's many short-lived allocations between long-lived ones do.
blocks, pins = [], []
for _ in range(4096):  # 256 MiB
    blocks.append(libc.malloc(64 * 1024))
    pins.append(libc.malloc(64))
    ctypes.memset(blocks[-1], 1, 64 * 1024)
for b in blocks:
    libc.free(b)
held = host_memory.rss_bytes()
host_memory.release_freed_memory()
print(held - host_memory.rss_bytes())
"""


@linux
def test_release_freed_memory_returns_small_block_heap():
    out = subprocess.run([sys.executable, "-c", _TRIM_PROBE], capture_output=True, text=True, check=True).stdout
    if out.strip() == "skip":
        pytest.skip("no glibc malloc_trim")
    assert int(out) > 150 * 2**20  # freed, trimmed pages left the resident set
