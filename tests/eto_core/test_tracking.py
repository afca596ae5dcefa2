"""eto_core.tracking: runs that start side by side on one fresh local MLflow store."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

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
