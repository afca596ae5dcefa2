"""A process-wide stop request that work on worker threads checks between steps.

A stop signal (SIGTERM, Ctrl-C) reaches only the main thread, where the CLI turns it into an
exception. Rollout shards run on a task runner's worker threads, and the runner waits for them
when the flow unwinds: without a check of their own they would finish every remaining episode
of the shard first, minutes after the user asked to stop. The CLI's signal handler calls
``request_stop``; the rollout loop calls ``check`` before each batch of agent turns.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_REQUESTED = threading.Event()
_holding = False
"""Whether the main thread is in an ``uninterrupted`` block (signals only interrupt that thread)."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(BaseException):
    """The process was told to stop. A BaseException, so that ``except Exception`` fault handling
    (an environment error, a retried step) does not swallow it."""


def request_stop() -> None:
    _REQUESTED.set()


def clear_stop() -> None:
    """Forget a stop request (the handler that made it is gone: an in-process caller goes on)."""
    _REQUESTED.clear()


def stop_requested() -> bool:
    return _REQUESTED.is_set()


def check() -> None:
    """Raise ``StopRequested`` if a stop was requested."""
    if _REQUESTED.is_set():
        raise StopRequested("stopped on request: the work in flight was abandoned at a step boundary")


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A block a stop signal must not cut in half: SIGTERM and SIGINT received inside it are held
    and sent again when it ends, to whichever handler was installed before.

    Writes to a SQLite tracking store are the case: interrupted mid-transaction, the connection
    stays referenced by the exception's frames while the flow's ``finally`` marks its runs
    stopped, and its open write transaction locks that very write out (a stopped `eto baseline`
    hung retrying 'database is locked'). The block holds the signal itself rather than asking
    the installed handler to wait, because during a flow run the handler is Prefect's
    (``capture_sigterm`` replaces ours), which raises at once. A second signal while one is held
    exits at once, as a second stop does in the CLI. Only the main thread receives signals, so
    elsewhere this does nothing."""
    global _holding
    if threading.current_thread() is not threading.main_thread() or _holding:
        yield  # elsewhere no signal arrives; nested, the outer block holds it
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        if held:
            os._exit(128 + signum)
        held.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in STOP_SIGNALS}
    _holding = True
    try:
        yield
    finally:
        _holding = False
        for sig, old in previous.items():
            signal.signal(sig, old)
        if held:
            # Runs the restored handler now, in this thread: its exception leaves the block here.
            signal.raise_signal(held[0])
