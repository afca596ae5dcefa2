"""Freed memory handed back to the operating system before a stage computes.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc returns a freed block to the
arena it came from, which serves the thread that allocated it; it gives little of it back to the
system by itself. The flow's thread trains (DPO: ~10 GB at its peak with SmolLM2) and
the rollout shards run on worker threads, whose KV caches then came from fresh memory: a
SmolLM2 tidy run (DPO, two evaluation shards, exploration and DPO again in one process) had
reached a 23 GB peak and was killed by the OOM killer in the next evaluation. ``malloc_trim(0)`` returns the free pages of
every arena (docs/benchmarks.md has the measurement). A training stage collects and trims once
it has saved its model; every stage trims before it computes.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    # By name, not ctypes.util.find_library (which runs ldconfig or a compiler in a subprocess,
    # and finds nothing on an image without them); the running process's own symbols next.
    for name in ("libc.so.6", None):
        try:
            trim = ctypes.CDLL(name).malloc_trim
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
            continue
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
        return trim  # type: ignore[no-any-return]
    return None


_TRIM = _malloc_trim()


def release_memory(collect: bool = True) -> bool:
    """Collect garbage (``collect``), then give every malloc arena's free pages back to the system.

    The collection frees what reference cycles hold (a finished Trainer with its optimizer
    state); it takes ~0.3 s in a process that has imported torch, transformers and Prefect, so
    it runs after training, and the cheap trim before every stage. Returns whether the C library
    could be asked (glibc); elsewhere only the collection runs."""
    if collect:
        gc.collect()
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
