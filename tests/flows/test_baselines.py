"""Each baseline flow runs on the mini recipe, tracked in MLflow, with the method's own stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from eto_core import stages
from eto_core.config import load_recipe
from eto_core.records import read_records

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


def _stage_artifacts(client: MlflowClient, run_id: str, stage: str) -> list[str]:
    """Artifact URIs of the ``stage`` runs nested under the method's run: this run's own outputs,
    not whatever else the shared artifact root holds."""
    experiment = client.get_run(run_id).info.experiment_id
    children = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}' and tags.`eto.stage` = '{stage}'"
    )
    return [c.data.tags["eto.artifact"] for c in children]


@pytest.mark.parametrize("method", ["best-of-n", "rft", "rft-eto", "eto-no-sft"])
def test_each_baseline_runs_and_is_tracked(
    method: str, shared: Path, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.baselines import baseline_flow

    # What the pairs stage is given (rollouts run on Prefect's thread runner, in this process).
    pair_calls: list[dict[str, Any]] = []
    real_build_pairs = stages.data.build_pairs

    def spy_build_pairs(experts: Any, explored: Any, **kwargs: Any) -> Any:
        pair_calls.append({"experts": list(experts), "explored": list(explored), **kwargs})
        return real_build_pairs(experts, explored, **kwargs)

    monkeypatch.setattr(stages.data, "build_pairs", spy_build_pairs)
    recipe = _recipe(shared)
    out = baseline_flow(recipe, method, state_dir=str(shared / "state"))
    assert out["method"] == method and {s["split"] for s in out["summaries"]} == {"seen", "unseen"}
    client = MlflowClient(tracking_uri=recipe.tracking.mlflow_uri)
    run = client.get_run(out["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["eto.method"] == method
    assert "seen_avg_reward" in run.data.metrics
    store = stages.make_store(recipe, str(shared / "state"))
    if method == "best-of-n":
        labels = {s["stage"] for s in out["summaries"]}
        assert labels == {"best-of-3 (oracle)"}
        assert len(out["summaries"]) == 2  # seen and unseen, each from its own rollout artifact
        for summary in out["summaries"]:
            ref = store.find(summary["artifact"]["uri"])
            assert ref is not None and ref.digest == summary["artifact"]["digest"]
            counts = read_records(store.fetch(ref) / stages.TRAJ_FILE, "trajectories")["task_id"].value_counts()
            tasks = {"seen": recipe.data.seen_tasks, "unseen": recipe.data.unseen_tasks}[summary["split"]]
            assert len(counts) == tasks and counts.eq(3).all(), counts  # three samples of every task
        assert all(s["extra"]["samples_per_task"] == 3.0 for s in out["summaries"])
    if method in ("rft", "rft-eto"):
        rft = _stage_artifacts(client, out["mlflow_run_id"], "rft")
        assert len(rft) == 1 and store.find(rft[0]) is not None
    if method in ("rft-eto", "eto-no-sft"):
        # Never trained on expert trajectories: the pairs stage got none, only the agent's samples.
        assert len(pair_calls) == recipe.iterations == 1
        call = pair_calls[0]
        assert call["experts"] == [] and call["self_pairs"] is True
        explored = call["explored"]
        assert len(explored) == 2 * recipe.data.train_tasks and {t.source for t in explored} == {"explore"}
        # This run's own pairs file (not another method's from the shared root) exists and holds
        # one self pair per task whose two samples differ in reward.
        uris = _stage_artifacts(client, out["mlflow_run_id"], "pairs")
        assert len(uris) == 1
        ref = store.find(uris[0])
        assert ref is not None
        kinds = list(read_records(store.fetch(ref) / stages.PAIRS_FILE, "pairs")["kind"])
        rewards: dict[str, set[float]] = {}
        for t in explored:
            rewards.setdefault(t.task_id, set()).add(t.reward)
        contrasting = sum(len(r) > 1 for r in rewards.values())
        assert kinds == ["self"] * contrasting
        # The mini model never scores, so on this recipe there is no contrast: the method stops
        # before DPO and says so (the kinds of non-empty self pairs: tests/eto_core/test_pairs.py).
        assert ("eto.stopped" in run.data.tags) == (contrasting == 0)
        assert bool(_stage_artifacts(client, out["mlflow_run_id"], "dpo")) == (contrasting > 0)


def test_no_expert_methods_need_samples_to_pair(shared: Path, prefect_harness: None) -> None:
    from flows.baselines import baseline_flow

    recipe = _recipe(shared, "pairs.samples_per_task=1", "explore.temperature=0.0")
    with pytest.raises(ValueError, match="pairs.samples_per_task >= 2"):
        baseline_flow(recipe, "eto-no-sft", state_dir=str(shared / "state"))
