"""A step of the in-process DAG starts by handing the heap its predecessors freed back to the kernel."""

import os
import sys

import pytest

from ml.pipeline.tasks import _return_freed_heap


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc are Linux's")
def test_memory_freed_inside_the_heap_stops_being_resident():
    blocks = [bytearray(1000) for _ in range(200_000)]  # about 200 MB of malloc'd blocks
    pinned = blocks[-1]  # the heap's last block stays, so free() alone cannot shrink the heap from its top
    del blocks
    freed = _resident_mb()
    _return_freed_heap()
    assert _resident_mb() < freed - 100
    assert len(pinned) == 1000
