"""Clean stops for long-running commands: signals become an exception, and no child outlives us.

Two mechanisms, for two ways a command ends early:

* **SIGTERM or SIGINT** (a CI timeout, a scheduler, a container stop, Ctrl-C): ``stop_on_signals``
  turns the first one into ``Interrupted``, a ``BaseException`` like ``KeyboardInterrupt``, raised
  in the main thread. It unwinds through every ``finally`` (the Dask cluster closes, the MLflow run
  is ended KILLED, Prefect marks the flow run Crashed) and the command exits with 128 + signal. A
  second signal while that cleanup runs exits at once; the watchdog then stops what is left.
* **SIGKILL of the command** (or a crash that skips every ``finally``): ``ChildWatchdog`` is a
  small separate process that, once the command is gone, sends SIGTERM and, after
  ``GRACE_SECONDS``, SIGKILL to every process the command started. It is a separate process
  because nothing inside a SIGKILLed process runs, and it learns of the death at once: it holds
  the read end of a pipe whose only write end the command holds, and the kernel closes that when
  the command dies. It finds the processes two ways: each carries the command's token in its
  environment (``TREE_ENV``, inherited by every process started with the command's environment,
  even one that started its own session or was started a moment before the kill), and the
  command's descendants are polled every ``POLL_SECONDS`` (for a child started with an environment
  of its own). Processes spawned by libraries (Prefect's temporary server, a ``uvicorn`` child;
  Dask's worker processes; a simulator's JVM) are covered without changing how they are started.

The watchdog runs in its own session, so a Ctrl-C at the terminal or a SIGKILL of the command's
process group does not take it down before it has done its job.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from types import FrameType

import psutil

from eto_core.stopping import STOP_SIGNALS, clear_stop, request_stop

POLL_SECONDS = 0.25
GRACE_SECONDS = 3.0
TREE_ENV = "ETO_PROCESS_TREE"  # the token that marks the processes of one command
RELEASE = b"r"  # written by the command before it exits: leave its descendants running


class Interrupted(BaseException):
    """A stop signal arrived. A BaseException, like KeyboardInterrupt: ``except Exception`` in
    library code must not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def stop_reason(exc: BaseException) -> int | None:
    """The signal number if ``exc`` means the process was told to stop, else None.

    Prefect raises its own TerminationSignal when its SIGTERM handler is the one installed (a
    deployment run, a flow called without the CLI); Ctrl-C without our handler is KeyboardInterrupt."""
    if isinstance(exc, Interrupted):
        return exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return int(signal.SIGINT)
    signum = getattr(exc, "signal", None)  # prefect.exceptions.TerminationSignal, without importing Prefect
    if type(exc).__name__ == "TerminationSignal" and isinstance(signum, int):
        return signum
    return None


def stop_in_chain(exc: BaseException) -> int | None:
    """``stop_reason`` of ``exc`` or of an exception it was raised while handling.

    During a flow run Prefect's own SIGTERM handler replaces ours and raises TerminationSignal;
    landing while Prefect's task engine starts a task run, that stop can fail in Prefect's own
    crash handling ('Task run is not set'), which then raises a ValueError instead, the stop
    only in its context, and our handler never hears of the signal."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if (signum := stop_reason(current)) is not None:
            return signum
        current = current.__cause__ if current.__cause__ is not None else current.__context__
    return None


def hidden_stop(exc: BaseException) -> Interrupted | None:
    """An ``Interrupted`` for the stop that the error ``exc`` hides (``stop_in_chain``), to raise
    from a flow in its place so that the flow run ends as stopped (CRASHED), not FAILED."""
    if not isinstance(exc, Exception) or (signum := stop_in_chain(exc)) is None:
        return None
    return Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """SIGTERM and SIGINT raise ``Interrupted`` in the main thread for as long as this is active.

    Yields the signals received: library code (Prefect's task engine, caught mid-start) may turn
    the ``Interrupted`` into an error of its own, and the command still has to exit as stopped.
    """
    stopping: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if stopping:
            # A second signal while the first one's cleanup runs: the user means it. The watchdog
            # stops the children that cleanup did not reach.
            os._exit(128 + signum)
        stopping.append(signum)
        # Rollout shards on worker threads stop at their next step rather than run to their end.
        request_stop()
        # Inside a tracking-store write this runs once the write has ended
        # (eto_core.stopping.uninterrupted holds the signal until then).
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield stopping
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        clear_stop()


class ChildWatchdog:
    """A process that stops this process's descendants once this process is gone (see the module
    docstring), whether it exits or is killed: the kernel closes our end of the pipe either way,
    after Python's exit handlers (Prefect's own stop of its temporary server) have run.
    ``release()`` leaves them running instead (daemons started on purpose, such as `eto stack up`'s
    services). One per process, for the rest of its life."""

    def __init__(self) -> None:
        read_fd, self._write_fd = os.pipe()  # not inherited: our children never hold the write end
        me = psutil.Process()
        # Set in our own environment, so every child started from now on inherits it.
        self.token = os.environ[TREE_ENV] = f"{me.pid}-{secrets.token_hex(8)}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infra.lifecycle", str(me.pid), repr(me.create_time()), str(read_fd),
             self.token],
            pass_fds=(read_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
        )
        os.close(read_fd)

    def release(self) -> None:
        """Leave the descendants running when this process exits."""
        with contextlib.suppress(OSError):
            os.write(self._write_fd, RELEASE)


def terminate(procs: list[psutil.Process], grace: float = GRACE_SECONDS) -> list[psutil.Process]:
    """SIGTERM, then SIGKILL after ``grace`` seconds; the processes still alive after that."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        _, procs = psutil.wait_procs(procs, timeout=wait)
        if not procs:
            break
    return procs


# -- the watchdog process ------------------------------------------------------------------------
def _same(pid: int, created: float) -> psutil.Process | None:
    """The process ``pid`` if it is still the one created at ``created`` (not a reused pid)."""
    try:
        proc = psutil.Process(pid)
        return proc if abs(proc.create_time() - created) < 0.5 else None
    except psutil.Error:
        return None


def _marked(token: str) -> dict[int, psutil.Process]:
    """Every process whose environment carries ``token`` (those of other users cannot be read,
    and are not ours)."""
    found = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(TREE_ENV) == token:
                found[proc.pid] = proc
    return found


def _watch(parent_pid: int, parent_created: float, fd: int, token: str) -> None:
    parent = _same(parent_pid, parent_created)
    seen: dict[int, float] = {}  # descendants by pid -> create time
    released = False
    while parent is not None:
        readable, _, _ = select.select([fd], [], [], POLL_SECONDS)
        if readable:
            data = os.read(fd, 64)
            released = released or RELEASE in data
            if not data:  # EOF: the parent exited or was killed
                break
            continue
        with contextlib.suppress(psutil.Error):
            for child in parent.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    seen.setdefault(child.pid, child.create_time())
    if released:
        return
    left = _marked(token)
    for pid, created in seen.items():
        proc = _same(pid, created)
        if proc is not None:
            left[pid] = proc
    # Orphans are reparented, but keep their own children: collect those too.
    for proc in list(left.values()):
        with contextlib.suppress(psutil.Error):
            left.update({c.pid: c for c in proc.children(recursive=True)})
    terminate([p for p in left.values() if p.pid != os.getpid()])


if __name__ == "__main__":
    _watch(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
