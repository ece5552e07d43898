import resource
import subprocess
import sys

import pytest

# VmSize grows by the buffer while glibc keeps it for reuse, and not once it is given back.
_KEPT = """
import numpy as np
from gpufocus.allocator import tune_host_allocator

def size():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))

tune_host_allocator()
before = size()
buffer = np.ones(200 << 20, dtype=np.uint8)  # above glibc's own 32 MB threshold for mmap
del buffer
print(size() - before)
"""

# VmSize after 8 threads allocated a little each: glibc gives each its own arena, which
# reserves 64 MB of address space, up to 8 per core.
_ARENAS = """
import threading
from gpufocus.allocator import tune_host_allocator

def size():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))

tune_host_allocator()
before = size()
barrier = threading.Barrier(8)

def work():
    barrier.wait()
    kept = [bytearray(1000) for _ in range(1000)]  # malloc's (not Python's small-object arenas)
    barrier.wait()

threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(size() - before)
"""


def _grown_by(script: str, limit: int | None) -> int:
    """How much ``script`` says the process's address space grew, run under ``limit``."""

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          preexec_fn=limited if limit else None)
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_buffers_are_kept_for_reuse_only_without_an_address_space_limit():
    assert _grown_by(_KEPT, None) >= 150 << 20
    # under a limit the kept buffers would count against it: they go back
    assert _grown_by(_KEPT, 3 << 30) < 50 << 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_under_an_address_space_limit_threads_share_two_arenas():
    assert _grown_by(_ARENAS, 3 << 30) < 200 << 20  # glibc's own: about 8 x 64 MB
