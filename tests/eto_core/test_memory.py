from __future__ import annotations

import threading

import psutil
import pytest
import torch

from eto_core.memory import release_memory


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def test_memory_a_worker_thread_freed_goes_back_to_the_system() -> None:
    """The pipeline's case: one thread frees (a training stage), another allocates next (rollout
    shards). glibc keeps the freed pages in the first thread's arena until trimmed."""

    pinned: list[torch.Tensor] = []

    def work() -> None:
        # A large block first: freeing it raises glibc's mmap threshold, so the megabyte tensors
        # after it come from the arena (as a training step's activations do) instead of mmap.
        torch.empty(8 << 20, dtype=torch.uint8)
        held = [torch.ones(1 << 20, dtype=torch.uint8) for _ in range(256)]
        # A live block above them: glibc's own trimming at free() only cuts the top of a heap,
        # so what lies below stays with the arena until malloc_trim, whatever ran before.
        pinned.append(torch.ones(4096, dtype=torch.uint8))
        del held

    before = _rss_mb()
    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    freed_but_held = _rss_mb() - before
    if not release_memory():
        pytest.skip("not glibc: no malloc_trim to call")
    given_back = before + freed_but_held - _rss_mb()
    assert freed_but_held > 128 and given_back > 128, (freed_but_held, given_back)
