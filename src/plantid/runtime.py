"""Process-wide CPU runtime settings that PyTorch leaves to the application (the C allocator), and
what the process and the machine hold in memory and have spent on the CPU.

glibc's malloc serves large blocks with mmap and gives them back to the kernel on free. PyTorch's
CPU kernels allocate and free their activation buffers on every call, so without tuning each
forward pass page-faults its whole working set in again. On the 2-core reference VM the kernel
(sys) took half the CPU time of lite0 inference at 192 px. Keeping freed memory in the heap made
`cpu-default` training 473 -> 353 s and eval 37 -> 115 images/s (docs/benchmarks.md, "Allocator").
PyTorch's CPU tuning guide reaches the same end by preloading jemalloc or tcmalloc; mallopt needs
no extra library and can be applied from inside the running process.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks below this size come from the heap and freed memory up to it is kept for reuse.
KEEP_BYTES = 1 << 30
OPT_OUT_ENV = "PLANTID_SYSTEM_MALLOC"


def keep_freed_memory(limit_bytes: int = KEEP_BYTES) -> bool:
    """Make glibc keep freed tensor buffers for reuse instead of unmapping them; True if applied.

    The price is that the process's resident memory stays near its peak instead of shrinking
    between batches. A no-op (False) off glibc, or when ``PLANTID_SYSTEM_MALLOC=1`` is set to
    keep the system's defaults. Idempotent: safe to call from every entry point.
    """
    if os.environ.get(OPT_OUT_ENV, "").strip() not in ("", "0") or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    limit = int(min(limit_bytes, 2**31 - 1))
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))


def peak_resident_mb() -> float | None:
    """The peak resident memory of this process in MB (getrusage; None where it is not available)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def memory_available_mb() -> float | None:
    """Memory the system can still give to programs without swapping, in MB (Linux's
    MemAvailable; None elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def resident_mb() -> float | None:
    """The resident memory of this process now, in MB (Linux's /proc/self/statm; None elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def machine_cpu_seconds() -> float | None:
    """CPU seconds every process on the machine has used since boot (Linux's /proc/stat; None elsewhere)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
