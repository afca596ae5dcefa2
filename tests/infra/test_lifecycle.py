"""infra.lifecycle on a stand-in command: a Python process that starts the watchdog, then a
child that would sleep for minutes, and waits. Fast: no Prefect, no model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path

import psutil
import pytest

from infra.lifecycle import (
    GRACE_SECONDS,
    TREE_ENV,
    Interrupted,
    hidden_stop,
    stop_in_chain,
    stop_on_signals,
    stop_reason,
)

ROOT = Path(__file__).resolve().parents[2]

COMMAND = """
import subprocess, sys, time
from infra.lifecycle import ChildWatchdog, Interrupted, stop_on_signals
watchdog = ChildWatchdog()
# A child that ignores SIGTERM: only the watchdog's SIGKILL after the grace period stops it.
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          "print('ready', flush=True); time.sleep(300)"], stdout=subprocess.PIPE, text=True,
                         start_new_session=sys.argv[1] == "session")
child.stdout.readline()
if sys.argv[1] == "release":
    watchdog.release()
print(child.pid, flush=True)
try:
    with stop_on_signals():
        time.sleep(300)
except Interrupted as exc:
    sys.exit(exc.exit_code)
"""


@contextmanager
def command(mode: str = "watch", settle: float = 0.6) -> Iterator[tuple[subprocess.Popen[str], psutil.Process]]:
    """The stand-in command and its child; ``settle``: seconds before the test goes on."""
    proc = subprocess.Popen([sys.executable, "-c", COMMAND, mode], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    child = psutil.Process(int(proc.stdout.readline()))
    time.sleep(settle)
    try:
        yield proc, child
    finally:
        proc.kill()  # a no-op once it has been waited for
        proc.wait()
        with suppress(psutil.NoSuchProcess):
            child.kill()  # psutil checks it is still the same process, not a reused pid


def _gone(proc: psutil.Process, within: float) -> bool:
    try:
        proc.wait(timeout=within)
    except psutil.TimeoutExpired:
        return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_exits_128_plus_signal_and_the_child_is_stopped(sig: int) -> None:
    with command() as (proc, child):
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=10) == 128 + sig
        assert _gone(child, GRACE_SECONDS + 5)


def test_sigkill_of_the_command_stops_its_child_within_seconds() -> None:
    with command() as (proc, child):
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        started = time.monotonic()
        assert _gone(child, GRACE_SECONDS + 5)
        assert time.monotonic() - started < GRACE_SECONDS + 3


def test_sigkill_right_after_a_child_started_its_own_session_stops_it_too() -> None:
    """Too soon for the watchdog's polling, and outside the command's process group: found by
    the token in its environment."""
    with command("session", settle=0.0) as (proc, child):
        assert os.getsid(child.pid) != os.getsid(proc.pid)
        assert child.environ()[TREE_ENV].startswith(f"{proc.pid}-")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert _gone(child, GRACE_SECONDS + 5)


def test_released_children_outlive_the_command() -> None:
    with command("release") as (proc, child):
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        assert not _gone(child, GRACE_SECONDS + 1)


def test_stop_reason_names_the_signal_of_every_kind_of_stop() -> None:
    from prefect.exceptions import TerminationSignal  # what Prefect's own SIGTERM handler raises

    assert stop_reason(Interrupted(signal.SIGTERM)) == signal.SIGTERM
    assert stop_reason(KeyboardInterrupt()) == signal.SIGINT
    assert stop_reason(TerminationSignal(signal.SIGTERM)) == signal.SIGTERM
    assert stop_reason(ValueError("x")) is None
    assert Interrupted(signal.SIGINT).exit_code == 130


def _task_run_not_set(stop: BaseException) -> ValueError:
    """What Prefect's task engine raised when a stop landed while it started a task run: its
    crash handling failed, and the stop survives only as the error's context."""
    try:
        try:
            raise stop
        except BaseException:
            raise ValueError("Task run is not set") from None
    except ValueError as exc:
        exc.__suppress_context__ = False
        return exc


def test_a_stop_hidden_in_an_errors_context_is_found_and_raised_as_a_stop() -> None:
    from prefect.exceptions import TerminationSignal

    hidden = _task_run_not_set(TerminationSignal(signal.SIGTERM))
    assert stop_reason(hidden) is None and stop_in_chain(hidden) == signal.SIGTERM
    stopped = hidden_stop(hidden)
    assert isinstance(stopped, Interrupted) and stopped.signum == signal.SIGTERM
    caused = RuntimeError("wrapped")
    caused.__cause__ = KeyboardInterrupt()
    assert stop_in_chain(caused) == signal.SIGINT
    plain = _task_run_not_set(OSError("disk"))
    assert stop_in_chain(plain) is None and hidden_stop(plain) is None
    assert hidden_stop(Interrupted(signal.SIGTERM)) is None  # already a stop: raised as it is
    looped = ValueError("a")
    looped.__context__ = ValueError("b")
    looped.__context__.__context__ = looped
    assert stop_in_chain(looped) is None


def test_a_flow_raises_the_stop_an_error_hides_and_tracks_the_run_as_killed() -> None:
    from prefect.exceptions import TerminationSignal

    from flows.pipeline_run import ended_status, raise_hidden_stop

    hidden = _task_run_not_set(TerminationSignal(signal.SIGTERM))
    assert ended_status(hidden) == "KILLED" and ended_status(ValueError("x")) == "FAILED"
    with pytest.raises(Interrupted) as raised:
        raise_hidden_stop(hidden)
    assert raised.value.__cause__ is hidden
    raise_hidden_stop(ValueError("x"))  # a plain error is left to the caller's bare raise


PREFECT_HANDLER_STOP = """
import os, signal, sys
import flows.cli as cli
from prefect.exceptions import TerminationSignal

def dispatch(args, watchdog):
    # As during a flow run: Prefect's SIGTERM handler replaces ours, and its task engine, stopped
    # while it starts a task run, raises an error of its own with the stop as its context.
    def prefect_handler(signum, frame):
        raise TerminationSignal(signum)
    ours = signal.signal(signal.SIGTERM, prefect_handler)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
    except TerminationSignal:
        raise ValueError("Task run is not set")
    finally:
        signal.signal(signal.SIGTERM, ours)

cli._dispatch = dispatch
sys.exit(cli.main(["serve", "--model", "unused"], supervise=True))
"""


def test_a_stop_that_reached_prefects_handler_still_exits_as_stopped() -> None:
    done = subprocess.run([sys.executable, "-c", PREFECT_HANDLER_STOP], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    assert "eto serve: stopped by SIGTERM." in done.stderr


MASKED_STOP = """
import os, signal, sys
import flows.cli as cli

def dispatch(args, watchdog):
    # As Prefect's task engine does when the stop lands while a task run starts: it catches the
    # stop and reports an error of its own, which the CLI prints and turns into exit code 2.
    try:
        os.kill(os.getpid(), signal.SIGTERM)
    except BaseException:
        pass
    print("error: Task run is not set", file=sys.stderr)
    return 2

cli._dispatch = dispatch
sys.exit(cli.main(["serve", "--model", "unused"], supervise=True))
"""


def test_a_stop_that_library_code_turns_into_an_error_still_exits_as_stopped() -> None:
    done = subprocess.run([sys.executable, "-c", MASKED_STOP], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    assert "eto serve: stopped by SIGTERM." in done.stderr


def test_a_stop_signal_asks_worker_threads_to_stop_for_as_long_as_the_handler_is_installed() -> None:
    from eto_core import stopping

    with stop_on_signals() as received:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here, in the main thread
        except Interrupted:
            assert received == [signal.SIGTERM] and stopping.stop_requested()
    assert not stopping.stop_requested()  # the caller goes on (tests, in-process use): forgotten


def test_a_stop_signal_waits_for_the_uninterrupted_block_then_raises() -> None:
    from eto_core import stopping

    done = []
    with pytest.raises(Interrupted), stop_on_signals() as received:
        with stopping.uninterrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here, in the main thread
            done.append("the block's work")
        done.append("after the block")  # never: the deferred exception is raised at the block's end
    assert done == ["the block's work"] and received == [signal.SIGTERM]
    # Outside a block the handler raises at once, as before.
    with pytest.raises(Interrupted), stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        done.append("never")
    assert done == ["the block's work"]


@pytest.mark.parametrize("handler", ["ours", "prefect"])
def test_a_stop_signal_mid_write_lets_the_tracking_write_finish(handler: str, tmp_path: Path) -> None:
    """A stopped flow's ``finally`` marks its MLflow runs stopped. Had the signal cut a SQLite
    write in half, the interrupted transaction would hold the store's lock against that very
    write; the write in flight finishes first, then the stop unwinds. During a flow run the
    installed SIGTERM handler is Prefect's (``capture_sigterm``), which raises at once; the write
    is held from it too, and its stop reaches ours afterwards."""
    from prefect.utilities.engine import capture_sigterm

    from eto_core.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "eto")
    run = tracker.start_run("r")
    client = tracker.client._client
    real = client.log_batch

    def log_batch(*args: object, **kwargs: object) -> object:
        os.kill(os.getpid(), signal.SIGTERM)  # the signal arrives in the middle of the write
        time.sleep(0.05)
        return real(*args, **kwargs)

    client.log_batch = log_batch
    outer = capture_sigterm() if handler == "prefect" else nullcontext()
    with pytest.raises(Interrupted), stop_on_signals() as received, outer:
        tracker.log_metrics(run, {"x": 1.0})
    client.log_batch = real
    assert received == [signal.SIGTERM]
    assert tracker.client.get_run(run).data.metrics == {"x": 1.0}
    tracker.end_run(run, status="KILLED")  # the store is not left locked
    assert tracker.client.get_run(run).info.status == "KILLED"
