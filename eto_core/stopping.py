"""A process-wide stop request that work on worker threads checks between steps.

A stop signal (SIGTERM, Ctrl-C) reaches only the main thread, where the CLI turns it into an
exception. Rollout shards run on a task runner's worker threads, and the runner waits for them
when the flow unwinds: without a check of their own they would finish every remaining episode
of the shard first, minutes after the user asked to stop. The CLI's signal handler calls
``request_stop``; the rollout loop calls ``check`` before each batch of agent turns.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_REQUESTED = threading.Event()
_depth = 0
"""How many ``uninterrupted`` blocks the main thread is in (signals only interrupt that thread)."""
_deferred: list[BaseException] = []


class StopRequested(BaseException):
    """The process was told to stop. A BaseException, so that ``except Exception`` fault handling
    (an environment error, a retried step) does not swallow it."""


def request_stop() -> None:
    _REQUESTED.set()


def clear_stop() -> None:
    """Forget a stop request (the handler that made it is gone: an in-process caller goes on)."""
    _REQUESTED.clear()
    _deferred.clear()


def stop_requested() -> bool:
    return _REQUESTED.is_set()


def check() -> None:
    """Raise ``StopRequested`` if a stop was requested."""
    if _REQUESTED.is_set():
        raise StopRequested("stopped on request: the work in flight was abandoned at a step boundary")


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A block a stop signal's exception must not cut in half; it is raised when the block ends.

    Writes to a SQLite tracking store are the case: interrupted mid-transaction, the connection
    stays referenced by the exception's frames while the flow's ``finally`` marks its runs
    stopped, and its open write transaction locks that very write out (a stopped `eto baseline`
    hung retrying 'database is locked'). Only the main thread receives signals, so elsewhere
    this does nothing."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _deferred:
            raise _deferred.pop()


def defer(exc: BaseException) -> bool:
    """For a signal handler: keep ``exc`` for the end of the current ``uninterrupted`` block and
    return True, or return False when the main thread is in none (the handler raises it now)."""
    if _depth == 0:
        return False
    _deferred[:] = [exc]
    return True
