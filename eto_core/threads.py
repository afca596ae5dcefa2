"""torch's intra-op thread count for one block of work on one thread, put back when it ends.

``torch.set_num_threads`` is not only the calling thread's setting: it also sets the count that
a thread begins with at its first parallel torch op. A rollout shard that runs at one thread
(``runner.torch_threads: 1``, two shards side by side on the pool) therefore left the stages
after it at one thread wherever their thread had done no torch work yet: a resumed `eto run`,
whose SFT was cached, trained its DPO on one core of two (tests/flows/test_runners.py). So
``torch_threads`` sets the count for its block and, when the block ends, puts back the count
that held before the first of the blocks running at the time began, in the ending thread (a
pool thread is reused for the next task) and for the threads that start later."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_LOCK = threading.Lock()
_active = 0
_before = 0
"""The count before the first of the blocks in flight began (read only while one is)."""


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Within the block this thread's torch ops use ``count`` threads (None: leave it as it is)."""
    global _active, _before
    if count is None:
        yield
        return
    with _LOCK:
        if _active == 0:
            _before = torch.get_num_threads()
        _active += 1
        restore = _before
    torch.set_num_threads(count)
    try:
        yield
    finally:
        with _LOCK:
            torch.set_num_threads(restore)
            _active -= 1
