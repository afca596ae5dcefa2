"""eto_core/threads.py: a rollout shard's thread count does not outlive the shard."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from eto_core.threads import torch_threads

PROCESS = 3
"""The count the process runs with in these tests: neither 1 nor a likely default."""


@pytest.fixture(autouse=True)
def process_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(PROCESS)
    yield
    torch.set_num_threads(before)


def _count_on_a_new_thread() -> int:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(torch.get_num_threads).result()


def test_within_the_block_the_thread_runs_at_the_given_count() -> None:
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    with torch_threads(None):
        assert torch.get_num_threads() == PROCESS


def test_two_shards_side_by_side_leave_later_stages_at_the_process_count() -> None:
    """As a 2-worker runner runs exploration's shards at one thread each, then DPO on a pool
    thread: the second shard's thread starts after the first shard set its count."""
    first_set = threading.Event()
    second_in = threading.Event()

    def shard(first: bool) -> tuple[int, int]:
        with torch_threads(1):
            inside = torch.get_num_threads()
            if first:
                first_set.set()
                assert second_in.wait(10)
            else:
                second_in.set()
        return inside, torch.get_num_threads()

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(shard, True)
        assert first_set.wait(10)
        second = pool.submit(shard, False)  # a thread started while the first block holds 1
        results = [first.result(), second.result()]
        # The same pool's threads, reused for the next task (the DPO stage), and new threads.
        reused = [pool.submit(torch.get_num_threads).result() for _ in range(4)]
    assert [inside for inside, _ in results] == [1, 1]
    assert [after for _, after in results] == [PROCESS, PROCESS]
    assert reused == [PROCESS] * 4
    assert _count_on_a_new_thread() == PROCESS
    assert torch.get_num_threads() == PROCESS


def test_a_block_that_raises_still_puts_the_count_back() -> None:
    def shard() -> None:
        with torch_threads(1):
            raise RuntimeError("shard failed")

    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(RuntimeError, match="shard failed"):
            pool.submit(shard).result()
        assert pool.submit(torch.get_num_threads).result() == PROCESS
    assert _count_on_a_new_thread() == PROCESS
