"""container_server.main.release_free_heap: freed heap below live chunks goes back to the kernel.

Run in a subprocess of its own, so that the measured heap is that process's alone.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's"),
]

# 40 MB in 4 KB objects (above obmalloc's 512-byte limit: each is a malloc chunk on
# the heap, below the mmap threshold), the last one kept so that the freed ones lie
# below a live chunk, where glibc's free never gives pages back by itself.
MEASURE = """
import json
from container_server.main import release_free_heap

def anon_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

blocks = [bytes(4096) for _ in range(10_000)]
keep = blocks[-1]
del blocks
freed = anon_kb()
release_free_heap()
print(json.dumps([freed, anon_kb()]))
"""


def test_freed_heap_below_live_chunks_is_returned() -> None:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE], capture_output=True, text=True, check=True
    )
    before_kb, after_kb = json.loads(result.stdout)
    # Most of the 40 MB was still resident after the frees, and left with the trim.
    assert before_kb - after_kb > 30_000, (before_kb, after_kb)
