"""Exclusive file locks between processes (and threads) on one machine.

``flock`` locks belong to the open file, so the kernel drops them when the holder dies: a killed
run never leaves a lock behind for the next one to wait on.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path, *, on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if missing); yields whether it had to wait.

    While held, the file names its holder ("pid N on host"), which ``on_wait`` receives, so a
    waiting run can say whom it waits for. Every holder opens its own file, so two threads of one
    process exclude each other as two processes do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = True
            if on_wait is not None:
                on_wait(os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
        try:
            yield waited
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
