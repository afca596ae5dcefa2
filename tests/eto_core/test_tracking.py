"""eto_core.tracking: runs that start side by side on one fresh local MLflow store; a stopped run's open nested runs."""

from __future__ import annotations

import logging
import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest

from eto_core.tracking import Tracker


def _open_store(uri: str, barrier: Any, results: Any) -> None:
    barrier.wait()  # all processes open the fresh database at the same moment
    try:
        results.put(Tracker(uri, "eto-race").experiment_id)
    except Exception as exc:  # reported to the test, which names it
        results.put(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")


def test_processes_opening_a_fresh_sqlite_store_at_once_all_succeed(tmp_path: Path) -> None:
    # Without the lock, MLflow's schema creation races: "table ... already exists".
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = mp.get_context("spawn")
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_store, args=(uri, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert len(set(got)) == 1 and str(got[0]).isdigit(), got


def test_end_open_children_ends_only_the_running_nested_runs(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "eto-stop")
    parent = tracker.start_run("parent")
    done, open_ = tracker.start_run("done", parent=parent), tracker.start_run("open", parent=parent)
    tracker.end_run(done)
    other = tracker.start_run("another parent's")
    tracker.end_open_children(parent, "KILLED")
    status = {r: tracker.client.get_run(r).info.status for r in (parent, done, open_, other)}
    assert status == {parent: "RUNNING", done: "FINISHED", open_: "KILLED", other: "RUNNING"}


def _locked_for(tracker: Tracker, failures: int) -> list[str]:
    """Make the store answer 'database is locked' to the next ``failures`` set_terminated calls."""
    from mlflow.exceptions import MlflowException

    real, calls = tracker.client.set_terminated, []

    def set_terminated(run_id: str, status: str = "FINISHED") -> None:
        calls.append(run_id)
        if len(calls) <= failures:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        real(run_id, status=status)

    tracker.client.set_terminated = set_terminated  # type: ignore[method-assign]
    return calls


def test_close_run_waits_out_a_locked_sqlite_store_and_ends_parent_and_open_children(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "eto-stop")
    parent = tracker.start_run("parent")
    child = tracker.start_run("open", parent=parent)
    calls = _locked_for(tracker, failures=2)
    tracker.close_run(parent, "KILLED", logging.getLogger("test"))
    assert [tracker.client.get_run(r).info.status for r in (parent, child)] == ["KILLED", "KILLED"]
    assert calls == [child, child, child, parent]  # two locked answers, then the child and the parent


def test_close_run_logs_a_lock_that_outlasts_the_retries_instead_of_raising(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("eto_core.tracking.time.sleep", lambda seconds: None)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "eto-stop")
    parent = tracker.start_run("parent")
    calls = _locked_for(tracker, failures=100)
    with caplog.at_level(logging.WARNING):
        tracker.close_run(parent, "KILLED", logging.getLogger("test"))
    assert len(calls) == 6 and "could not mark MLflow run" in caplog.text and "locked" in caplog.text


def test_end_run_raises_other_store_errors_at_once(tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "eto-stop")
    with pytest.raises(MlflowException):
        tracker.end_run("no-such-run", status="KILLED")
