"""A process-wide stop request that work on worker threads checks between steps.

A stop signal (SIGTERM, Ctrl-C) reaches only the main thread, where the CLI turns it into an
exception. Rollout shards run on a task runner's worker threads, and the runner waits for them
when the flow unwinds: without a check of their own they would finish every remaining episode
of the shard first, minutes after the user asked to stop. The CLI's signal handler calls
``request_stop``; the rollout loop calls ``check`` before each batch of agent turns.
"""

from __future__ import annotations

import threading

_REQUESTED = threading.Event()


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
