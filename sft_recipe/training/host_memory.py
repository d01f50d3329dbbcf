"""How `train` sets up the C library's allocator for tensors (Linux, glibc); the user's settings win.

PyTorch has no caching allocator on the CPU: every tensor comes from `malloc` and goes back with
`free`. glibc serves large requests with their own mappings, but each time such a block is freed it
raises its mmap threshold to that size (up to 32 MiB), so activation-sized tensors soon come from
the heap, and freed heap memory in the middle of it stays resident. Peak RSS then sits well above
the live tensors.

- A fixed `M_MMAP_THRESHOLD` keeps every block above it in its own mapping, returned to the system
  when the tensor dies: 1 MiB by default, 128 KiB with `release_host_memory: true`.
- The price is that each new tensor is fresh memory to fault in; PyTorch's `THP_MEM_ALLOC_ENABLE`
  backs tensors of 2 MiB and up with transparent huge pages, one fault per 2 MiB instead of 512,
  and fewer TLB misses in the matmuls that read them. It is read while torch loads, so the command
  line applies this before importing torch.

Measured (`benchmarks/README.md`): at 1 MiB with huge pages, training is as fast as with glibc's
moving threshold or faster, at a lower peak; at 128 KiB the peak is lower still, but small models,
whose tensors are mostly under 1 MiB, pay for every fault. Anything the user set (`MALLOC_*`,
`GLIBC_TUNABLES` malloc tunables, `THP_MEM_ALLOC_ENABLE`) is left as it is.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from collections.abc import MutableMapping
from pathlib import Path

import pyarrow

M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD_BYTES = 1 << 20  # default
RELEASE_THRESHOLD_BYTES = 128 << 10  # release_host_memory: true


def tune_host_memory(release: bool = False, environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Apply the settings this process can still take; return what was applied, for the log."""
    if not sys.platform.startswith("linux"):
        return []
    applied = []
    # Read once by PyTorch at its first CPU allocation, i.e. while `import torch` runs.
    if "THP_MEM_ALLOC_ENABLE" not in environ and "torch" not in sys.modules:
        environ["THP_MEM_ALLOC_ENABLE"] = "1"
        applied.append("THP_MEM_ALLOC_ENABLE=1")
    user_tuned = any(k.startswith("MALLOC_") for k in environ) or "glibc.malloc" in environ.get("GLIBC_TUNABLES", "")
    threshold = RELEASE_THRESHOLD_BYTES if release else MMAP_THRESHOLD_BYTES
    libc = glibc()
    if libc is not None and not user_tuned and libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1:
        applied.append(f"M_MMAP_THRESHOLD={threshold}")
    return applied


def glibc() -> ctypes.CDLL | None:
    """The running C library if it is glibc (musl has no dynamic threshold to pin), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def release_unused_memory() -> None:
    """Before training: hand back what data preparation freed but its allocators kept (Arrow's
    memory pool, glibc's heap), so that the training peak does not stand on it (15 MiB measured
    on 512 Alpaca rows; more on larger datasets). Costs milliseconds, once."""
    pyarrow.default_memory_pool().release_unused()
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def process_status(field: str) -> int:
    """A memory figure of this process from /proc (VmRSS now, VmHWM its peak: unlike `ru_maxrss`, the
    peak is not inherited from a parent across exec), else the peak `getrusage` gives."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def resident_bytes() -> int:
    """This process's resident memory now."""
    return process_status("VmRSS")


def peak_resident_bytes() -> int:
    """This process's peak resident memory."""
    return process_status("VmHWM")
