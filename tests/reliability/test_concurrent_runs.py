"""Two `eto run` of the same command started at once on one store, as two Prefect UI clicks or a
scheduled retraining meeting a manual run would.

Each stage holds the store's claim on its key while it computes, so the second run waits at
every stage the first one is computing and then reuses its artifact: neither computes a stage
the other has, and neither replaces an artifact the other is reading (which, with a different
digest, fails the reader with "the artifact was replaced").
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability.cli_runs import Run, check_complete, manifests, run
from tests.reliability.conftest import ROWS

pytestmark = pytest.mark.slow

WAITED = re.compile(r"another run \(pid \d+ on [^)]*\) is computing (\S+); waiting to reuse it")


def test_two_runs_of_the_same_command_at_once_compute_each_stage_once(tmp_path: Path) -> None:
    results: dict[str, Run] = {}

    def start(name: str) -> None:
        results[name] = run(tmp_path, None, extra=["--json", str(tmp_path / f"result-{name}.json")])

    runs = [threading.Thread(target=start, args=(name,)) for name in ("a", "b")]
    for t in runs:
        t.start()
    for t in runs:
        t.join()

    for name, result in results.items():
        assert result.returncode == 0, f"run {name} failed:\n{result.output[-3000:]}"
    waited = [uri for result in results.values() for uri in WAITED.findall(result.output)]
    tails = "\n".join(f"--- run {n}:\n{r.output[-2000:]}" for n, r in results.items())
    assert waited, f"neither run waited for the other: they computed the same stages twice\n{tails}"
    a, b = (json.loads((tmp_path / f"result-{n}.json").read_text()) for n in ("a", "b"))
    assert a["final_model"] == b["final_model"]  # one artifact (uri and content digest), not two
    root = tmp_path / "artifacts"
    check_complete(root)
    # Every stage run that computed (tag eto.cached False) names its artifact: one per artifact.
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        rows = db.execute("SELECT a.value FROM tags a JOIN tags c ON a.run_uuid = c.run_uuid "
                          "WHERE a.key = 'eto.artifact' AND c.key = 'eto.cached' AND c.value = 'False'").fetchall()
    computed = Counter(uri for (uri,) in rows)
    assert computed and max(computed.values()) == 1, f"stages computed by both runs: {computed.most_common(3)}"
    stages = sorted({uri.rstrip("/").split("/")[-2] for uri in waited})
    ROWS.append({
        "area": "concurrent runs", "test": "two runs at once",
        "fault": "the same `eto run` started twice at the same moment on one artifact root, MLflow store and "
                 "state directory",
        "error": f"both completed with the same final model; one waited {len(waited)} time(s) for the other "
                 f"(stages {', '.join(stages)}), logging \"another run (pid N on host) is computing <uri>; "
                 f"waiting to reuse it\", and reused its artifacts; each of the {len(computed)} stages MLflow "
                 f"logged was computed by one run; the store holds {len(manifests(root))} complete artifacts",
        "lost": "nothing",
    })
