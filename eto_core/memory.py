"""Freed memory handed back to the operating system before a stage computes.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc keeps what a stage frees in the
arena of the thread that freed it and hands it out again only from there; it returns little of
it to the system by itself. The flow's thread trains (DPO: ~10 GB at its peak with SmolLM2) and
the rollout shards run on worker threads, whose KV caches then came from fresh memory: a
SmolLM2 tidy run (two evaluation shards after DPO in one process) reached 19 GB of the
machine's 24 and was killed by the OOM killer. ``malloc_trim(0)`` returns the free pages of
every arena (docs/benchmarks.md has the measurement). A training stage collects and trims once
it has saved its model; every stage trims before it computes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
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
