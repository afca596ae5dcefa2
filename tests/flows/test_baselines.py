"""Each baseline flow runs on the mini recipe, tracked in MLflow, with the method's own stages."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from eto_core import pipeline as P
from eto_core.config import load_recipe

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]



@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifact root and MLflow store for all methods: they share the expert, base and SFT stages."""
    return tmp_path_factory.mktemp("baselines")


def _recipe(root: Path, *extra: str):  # type: ignore[no-untyped-def]
    # The mini model hardly ever succeeds, so RFT also keeps partial-credit trajectories here;
    # the success-only default is tested on hand-made trajectories below.
    return load_recipe(ROOT / "recipes" / "mini.yaml", [
        f"storage.root={root / 'artifacts'}", f"tracking.mlflow_uri=sqlite:///{root / 'mlflow.db'}",
        "baselines.best_of_n=3", "baselines.rft_samples=2", "baselines.rft_min_reward=0.0",
        "pairs.samples_per_task=2", "explore.temperature=1.0", *extra])


@pytest.mark.parametrize("method", ["best-of-n", "rft", "rft-eto", "eto-no-sft"])
def test_each_baseline_runs_and_is_tracked(method: str, shared: Path, prefect_harness: None) -> None:
    from flows.baselines import baseline_flow

    recipe = _recipe(shared)
    out = baseline_flow(recipe, method, state_dir=str(shared / "state"))
    assert out["method"] == method and {s["split"] for s in out["summaries"]} == {"seen", "unseen"}
    client = MlflowClient(tracking_uri=recipe.tracking.mlflow_uri)
    run = client.get_run(out["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["eto.method"] == method
    assert "seen_avg_reward" in run.data.metrics
    artifacts = shared / "artifacts"
    if method == "best-of-n":
        labels = {s["stage"] for s in out["summaries"]}
        assert labels == {"best-of-3 (oracle)"}
        for f in (artifacts / "best_of_n").glob("*/trajectories.parquet"):
            counts = P.read_records(f, "trajectories")["task_id"].value_counts()
            assert counts.eq(3).all()  # three samples of every evaluation task
        assert all(s["extra"]["samples_per_task"] == 3.0 for s in out["summaries"])
    if method in ("rft", "rft-eto"):
        assert any((artifacts / "rft").glob("*/manifest.json"))
    if method in ("rft-eto", "eto-no-sft"):
        # Never trained on expert trajectories: every pair is among the agent's own samples.
        for f in (artifacts / "pairs").glob("*/pairs.parquet"):
            kinds = set(P.read_records(f, "pairs")["kind"])
            assert kinds <= {"self"}


def test_no_expert_methods_need_samples_to_pair(shared: Path, prefect_harness: None) -> None:
    from flows.baselines import baseline_flow

    recipe = _recipe(shared, "pairs.samples_per_task=1", "explore.temperature=0.0")
    with pytest.raises(ValueError, match="pairs.samples_per_task >= 2"):
        baseline_flow(recipe, "eto-no-sft", state_dir=str(shared / "state"))
