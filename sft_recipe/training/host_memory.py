"""`release_host_memory: true`: freed tensor memory goes back to the system at once (Linux, glibc).

PyTorch has no caching allocator on the CPU: every tensor comes from `malloc` and goes back with
`free`. glibc serves large requests with their own mappings, but each time such a block is freed it
raises its mmap threshold to that size (up to 32 MiB), so activation-sized tensors soon come from
the heap, and freed heap memory in the middle of it stays resident. Peak RSS then sits well above
the live tensors.

- A fixed `M_MMAP_THRESHOLD` keeps every block of 128 KiB and up in its own mapping, returned to the
  system when the tensor dies.
- The price is that each new tensor is fresh memory to fault in; PyTorch's `THP_MEM_ALLOC_ENABLE`
  backs tensors of 2 MiB and up with transparent huge pages, one fault per 2 MiB instead of 512.
  It is read while torch loads, so the command line applies this before importing torch.

It is a trade, not a free win, hence off by default: lower peak RSS for more time, and small models
with many small tensors pay the most (`benchmarks/README.md` has the measurements). Anything the user set (`MALLOC_*`,
`GLIBC_TUNABLES` malloc tunables, `THP_MEM_ALLOC_ENABLE`) is left as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import MutableMapping

M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD_BYTES = 128 * 1024


def release_host_memory(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Apply the settings this process can still take; return what was applied, for the log."""
    if not sys.platform.startswith("linux"):
        return []
    applied = []
    # Read once by PyTorch at its first CPU allocation, i.e. while `import torch` runs.
    if "THP_MEM_ALLOC_ENABLE" not in environ and "torch" not in sys.modules:
        environ["THP_MEM_ALLOC_ENABLE"] = "1"
        applied.append("THP_MEM_ALLOC_ENABLE=1")
    user_tuned = any(k.startswith("MALLOC_") for k in environ) or "glibc.malloc" in environ.get("GLIBC_TUNABLES", "")
    libc = glibc()
    if libc is not None and not user_tuned and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1:
        applied.append(f"M_MMAP_THRESHOLD={MMAP_THRESHOLD_BYTES}")
    return applied


def glibc() -> ctypes.CDLL | None:
    """The running C library if it is glibc (musl has no dynamic threshold to pin), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc
