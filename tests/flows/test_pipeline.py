"""The whole flow on the mini recipe under Prefect's test harness, with a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from eto_core.config import load_recipe

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]



def test_mini_pipeline_runs_tracks_and_caches(tmp_path: Path, prefect_harness: None) -> None:
    from flows.pipeline import eto_pipeline

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = load_recipe(
        ROOT / "recipes" / "mini.yaml",
        [f"storage.root={tmp_path / 'artifacts'}", f"tracking.mlflow_uri={uri}"],
    )
    state = str(tmp_path / "state")
    first = eto_pipeline(recipe, state_dir=state)

    # SFT + 1 iteration, each on seen and unseen
    got = {(s["stage"], s["iteration"], s["split"]) for s in first["summaries"]}
    assert got == {("sft", 0, "seen"), ("sft", 0, "unseen"), ("dpo", 1, "seen"), ("dpo", 1, "unseen")}
    assert "ETO iter 1" in first["table"]
    for s in first["summaries"]:
        assert 0.0 <= s["avg_reward"] <= 1.0 and s["num_tasks"] == 4

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(recipe.tracking.experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    parent = client.get_run(first["mlflow_run_id"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    stages = {r.data.tags["eto.stage"] for r in children}
    assert {"expert", "sft", "explore", "pairs", "dpo", "evaluate"} <= stages
    assert "seen_avg_reward" in parent.data.metrics and "pairs_lose" in parent.data.metrics
    # Each evaluation's artifact is tagged on the run, for `eto compare`'s per-task pairing.
    for s in first["summaries"]:
        tag = json.loads(parent.data.tags[f"eto.eval.{s['split']}.{s['iteration']}"])
        assert tag == s["artifact"] and tag["uri"].startswith((tmp_path / "artifacts" / "evaluate").as_uri())
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "reward_per_iteration.png" in artifacts and "stage_seconds.md" in artifacts
    # The wall-time breakdown: every stage in the order the loop ran it, logged per stage.
    assert list(first["stage_seconds"]) == [
        "expert", "model_init", "sft", "evaluate-seen-iter0", "evaluate-unseen-iter0", "explore-train-iter1",
        "pairs-iter1", "dpo-iter1", "evaluate-seen-iter1", "evaluate-unseen-iter1"]
    assert first["stage_seconds"]["sft"] > 0 and parent.data.metrics["seconds/sft"] > 0
    versions = client.search_model_versions(f"name='{recipe.model_name}'")
    assert len(versions) == 2  # SFT and iteration 1
    assert {v.tags["stage"] for v in versions} == {"sft", "dpo"}
    assert all("seen_avg_reward" in v.tags for v in versions)

    # A rerun reuses every stage: same numbers, no new artifacts, no new model versions.
    artifact_dirs = sorted(p for p in (tmp_path / "artifacts").glob("*/*"))
    second = eto_pipeline(recipe, state_dir=state)
    assert second["summaries"] == first["summaries"]
    assert sorted(p for p in (tmp_path / "artifacts").glob("*/*")) == artifact_dirs
    assert len(client.search_model_versions(f"name='{recipe.model_name}'")) == 2
    rerun_children = [r for r in client.search_runs([exp.experiment_id])
                      if r.data.tags.get("mlflow.parentRunId") == second["mlflow_run_id"]]
    assert rerun_children == []


def test_stage_flows_share_the_pipeline_cache(tmp_path: Path, prefect_harness: None) -> None:
    from flows.pipeline import eto_iteration_flow, eto_pipeline, sft_flow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = load_recipe(
        ROOT / "recipes" / "mini.yaml",
        [f"storage.root={tmp_path / 'artifacts'}", f"tracking.mlflow_uri={uri}", "iterations=0"],
    )
    state = str(tmp_path / "state")
    sft = sft_flow(recipe, state_dir=state)
    assert "sft" in sft["table"]
    before = sorted((tmp_path / "artifacts").glob("*/*"))
    # The full pipeline with the same settings reuses the stage flow's artifacts.
    full = eto_pipeline(recipe, state_dir=state)
    assert full["final_model"] == sft["model"]
    assert sorted((tmp_path / "artifacts").glob("*/*")) == before
    # One iteration on its own, from the SFT model.
    it = eto_iteration_flow(recipe, sft["model"]["uri"], sft["model"]["digest"], iteration=1, state_dir=state)
    assert "ETO iter 1" in it["table"]
    assert (tmp_path / "artifacts" / "dpo").is_dir()


def test_evaluate_base_adds_the_zero_shot_row(tmp_path: Path, prefect_harness: None) -> None:
    """evaluate_base: the starting model is evaluated before SFT, as its own row and metrics."""
    from flows.pipeline import eto_pipeline

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = load_recipe(ROOT / "recipes" / "mini.yaml", [
        f"storage.root={tmp_path / 'artifacts'}", f"tracking.mlflow_uri={uri}", "evaluate_base=true", "iterations=0"])
    result = eto_pipeline(recipe, state_dir=str(tmp_path / "state"))
    got = {(s["stage"], s["iteration"], s["split"]) for s in result["summaries"]}
    assert got == {("base", 0, "seen"), ("base", 0, "unseen"), ("sft", 0, "seen"), ("sft", 0, "unseen")}
    lines = result["table"].splitlines()
    assert lines[2].startswith("| base model (zero-shot) |") and lines[3].startswith("| sft |")
    base = {s["split"]: s for s in result["summaries"] if s["stage"] == "base"}
    sft = {s["split"]: s for s in result["summaries"] if s["stage"] == "sft"}
    assert base["seen"]["artifact"]["uri"] != sft["seen"]["artifact"]["uri"]  # another model's rollout
    parent = MlflowClient(tracking_uri=uri).get_run(result["mlflow_run_id"])
    assert parent.data.metrics["base_seen_avg_reward"] == pytest.approx(base["seen"]["avg_reward"])
    assert parent.data.metrics["base_unseen_mean_steps"] == pytest.approx(base["unseen"]["mean_steps"])
    # eto compare pairs the base model's tasks with SFT's through this tag
    assert json.loads(parent.data.tags["eto.base_eval.seen"]) == base["seen"]["artifact"]
    assert parent.data.metrics["seen_avg_reward"] == pytest.approx(sft["seen"]["avg_reward"])  # step 0 stays SFT
