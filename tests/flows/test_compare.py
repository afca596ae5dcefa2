"""`eto compare` against a real MLflow store holding method runs and a pairs artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from eto_core.records import to_frame, write_records
from eto_core.tracking import Tracker
from tests.eto_core.test_compare import _pair

pytestmark = pytest.mark.slow



def test_compare_writes_and_logs_the_report(tmp_path: Path, prefect_harness: None) -> None:
    from flows.compare import compare_flow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "eto")
    pairs_dir = tmp_path / "artifacts" / "pairs" / "k1"
    write_records(to_frame([_pair()], "pairs"), pairs_dir / "pairs.parquet", "pairs")
    # The second rft seed-0 run is a rerun: it replaces the first instead of counting as a seed.
    for method, seed, rewards in [("eto", "0", [0.2, 0.4]), ("eto", "1", [0.3, 0.5]), ("rft", "0", [0.6]),
                                  ("rft", "0", [0.35])]:
        run = tracker.start_run(method, tags={"eto.method": method, "eto.seed": seed, "eto.recipe": "r", "eto.env": "tidy"})
        for i, r in enumerate(rewards):
            tracker.log_metrics(run, {"seen_avg_reward": r, "unseen_avg_reward": r / 2}, step=i)
        if method == "eto":
            child = tracker.start_run("pairs-iter1", parent=run, tags={"eto.stage": "pairs",
                                                                     "eto.artifact": pairs_dir.as_uri()})
            tracker.end_run(child)
        tracker.end_run(run)
    failed = tracker.start_run("broken", tags={"eto.method": "eto", "eto.recipe": "r"})
    tracker.end_run(failed, status="FAILED")  # unfinished runs are not compared

    out = compare_flow(uri, "eto", str(tmp_path / "report"), recipe="r")
    report = (tmp_path / "report" / "compare.md").read_text()
    assert "| eto iter 1 | 2 | 0.450 ± 0.071" in report and "| rft | 1 | 0.350" in report
    assert set(out["files"]) == {"compare.md", "reward_per_iteration.png", "viewer.html"}
    assert "tidy-7" in (tmp_path / "report" / "viewer.html").read_text()
    client = MlflowClient(tracking_uri=uri)
    logged = {a.path for a in client.list_artifacts(out["mlflow_run_id"], "compare")}
    assert logged == {f"compare/{f}" for f in out["files"]}

    with pytest.raises(ValueError, match="no finished eto run"):
        compare_flow(uri, "eto", str(tmp_path / "none"), recipe="other")
