"""`eto compare` against a real MLflow store holding method runs and a pairs artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from eto_core.records import EvalSummary, to_frame, write_records
from eto_core.storage import ArtifactStore
from eto_core.tracking import Tracker
from tests.eto_core.test_method_comparison import _pair
from tests.eto_core.test_pairs import traj

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
    for seed, best, rewards in [("0", "0", [0.2, 0.1]), ("1", "1", [0.3, 0.5])]:  # dev selection picked these
        run = tracker.start_run("eto-select", tags={"eto.method": "eto-select", "eto.seed": seed, "eto.recipe": "r",
                                                    "eto.best_iteration": best})
        for i, r in enumerate(rewards):
            tracker.log_metrics(run, {"seen_avg_reward": r, "unseen_avg_reward": r / 2}, step=i)
        tracker.end_run(run)
    failed = tracker.start_run("broken", tags={"eto.method": "eto", "eto.recipe": "r"})
    tracker.end_run(failed, status="FAILED")  # unfinished runs are not compared

    out = compare_flow(uri, "eto", str(tmp_path / "report"), recipe="r")
    report = (tmp_path / "report" / "compare.md").read_text()
    assert "| eto iter 1 | 2 | 0.450 ± 0.071" in report and "| rft | 1 | 0.350" in report
    # the model each seed's selection delivers: seed 0's SFT (0.2), seed 1's iteration 1 (0.5)
    assert "| eto-select, the dev-selected iteration | 2 | 0.350 ± 0.212" in report
    assert set(out["files"]) == {"compare.md", "reward_per_iteration.png", "viewer.html"}
    assert "tidy-7" in (tmp_path / "report" / "viewer.html").read_text()
    client = MlflowClient(tracking_uri=uri)
    logged = {a.path for a in client.list_artifacts(out["mlflow_run_id"], "compare")}
    assert logged == {f"compare/{f}" for f in out["files"]}

    assert "Per task, against the same seed's SFT" not in report  # these runs tagged no evaluations

    with pytest.raises(ValueError, match="no finished eto run"):
        compare_flow(uri, "eto", str(tmp_path / "none"), recipe="other")


def test_compare_pairs_tasks_with_the_same_seeds_sft(tmp_path: Path, prefect_harness: None) -> None:
    """Runs tag their evaluation artifacts (Tracker.log_summaries); compare reads them back and
    reports each row's per-task difference from SFT. An artifact deleted since is left out."""
    from flows.compare import compare_flow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "eto")
    store = ArtifactStore(str(tmp_path / "artifacts"), cache_dir=tmp_path / "cache")

    def evaluation(key: str, rewards: list[float], iteration: int) -> EvalSummary:
        folder = store.staging_dir()
        write_records(to_frame([traj(f"t{i}", ["x"], r) for i, r in enumerate(rewards)], "trajectories"),
                      folder / "trajectories.parquet", "trajectories")
        ref = store.publish(folder, store.uri_for("evaluate", key))
        return EvalSummary("s", iteration, "seen", sum(rewards) / len(rewards), 0.0, 1.0, len(rewards),
                           artifact=ref.to_dict())

    sft, eto = evaluation("sft", [0.0, 0.5, 1.0, 0.0], 0), evaluation("eto", [1.0, 0.5, 1.0, 0.0], 1)
    rft = evaluation("rft", [0.0, 0.0, 0.0, 0.0], 0)
    start, after = evaluation("start", [0.0, 0.0, 0.5, 0.0], 0), evaluation("after", [0.5, 0.0, 0.5, 0.0], 1)
    base = evaluation("base", [0.0, 0.0, 0.0, 0.5], 0)
    for method, summaries in [("eto", [sft, eto]), ("rft", [rft]), ("rft-eto", [start, after])]:
        run = tracker.start_run(method, tags={"eto.method": method, "eto.seed": "0", "eto.recipe": "r"})
        tracker.log_summaries(run, summaries)
        if method == "eto":  # the zero-shot model, evaluated beside SFT
            tracker.log_base_summaries(run, [base])
        tracker.end_run(run)
    out = compare_flow(uri, "eto", str(tmp_path / "report"), cache_dir=str(tmp_path / "cache"))
    report = (tmp_path / "report" / "compare.md").read_text()
    assert "Per task, against the same seed's SFT" in report
    assert "| eto iter 1 | 1 | +0.250 [" in out["paired_table"] and "| 1 / 0 / 4 |" in out["paired_table"]
    assert "| rft | 1 | -0.375 [" in out["paired_table"] and "| 0 / 2 / 4 |" in out["paired_table"]
    # The base model is a row of its own, first, paired with its seed's SFT: (0 + -0.5 + -1 + 0.5) / 4.
    assert "| base | 1 | -0.250 [" in out["paired_table"] and "| 1 / 2 / 4 |" in out["paired_table"]
    table = out["table"].splitlines()
    assert table[2].startswith("| base | 1 | 0.125 |") and table[3].startswith("| sft | 1 | 0.375 |")

    # Steps on the tasks both solved: SFT solved t2, ETO t0 and t2 (one step each); RFT, RFT->ETO
    # and the base model solved none (no reward of 1.0), so they have no row.
    assert "Steps on the tasks both solved" in report
    assert out["steps_table"].count("\n| ") == 1 and "| 1 | +0.000 [+0.000, +0.000] | 0 / 0 / 1 |" in out["steps_table"]
    assert "| eto iter 1 |" in out["steps_table"] and "| rft |" not in out["steps_table"]

    assert "ETO iterations against their own start" in report
    assert out["own_start_table"].count("\n| ") == 1 and "| rft-eto iter 1 | 1 | +0.125 [" in out["own_start_table"]

    (tmp_path / "artifacts" / "evaluate" / "rft" / "trajectories.parquet").unlink()
    again = compare_flow(uri, "eto", str(tmp_path / "report2"), cache_dir=str(tmp_path / "cache"))
    assert "| eto iter 1 |" in again["paired_table"] and "| rft |" not in again["paired_table"]
