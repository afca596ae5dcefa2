"""Iteration selection on held-out training tasks, early stopping and the champion alias, with
k sampled trajectories per task and pairs among them, on the mini recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from eto_core import pipeline as P
from eto_core.config import load_recipe
from eto_core.selection import choose_iteration

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]



def test_selection_picks_the_champion_and_stops_when_it_declines(tmp_path: Path, prefect_harness: None) -> None:
    from flows.pipeline import eto_pipeline

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = load_recipe(ROOT / "recipes" / "mini.yaml", [
        f"storage.root={tmp_path / 'artifacts'}", f"tracking.mlflow_uri={uri}", "iterations=3",
        "selection.split=train_holdout", "selection.tasks=4", "selection.patience=1",
        "pairs.samples_per_task=2", "pairs.self_pairs=true", "explore.temperature=0.9"])
    out = eto_pipeline(recipe, state_dir=str(tmp_path / "state"))
    sel = out["selection"]
    scores = sel["scores"]
    ran = len(scores) - 1  # iterations that ran
    assert 1 <= ran <= 3
    expected = choose_iteration(scores, patience=1)
    assert sel["best_iteration"] == expected.best_iteration
    if ran < 3:  # stopped early: the last iteration did not beat the best
        assert expected.stop and scores[-1] <= max(scores[:-1])
    assert {s["iteration"] for s in out["summaries"]} == set(range(ran + 1))

    # The held-out tasks follow the training tasks and are never trained on.
    held_out = P._split_tasks(recipe, "train", "select")
    assert held_out == P.env_factory(recipe)().tasks("train")[12:16]
    select_trajs = sorted((tmp_path / "artifacts" / "select").glob("*/trajectories.parquet"))
    assert len(select_trajs) == ran + 1
    # Exploration sampled two trajectories per task.
    explored = P.read_records(next((tmp_path / "artifacts" / "explore").glob("*/trajectories.parquet")), "trajectories")
    assert len(explored) == 2 * 12 and explored["task_id"].value_counts().eq(2).all()

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias(recipe.model_name, "champion")
    assert str(champion.version) == str(out["model_versions"][sel["best_iteration"]])
    assert float(champion.tags["select_avg_reward"]) == pytest.approx(max(scores), abs=1e-4)
    parent = client.get_run(out["mlflow_run_id"])
    assert parent.data.tags["eto.best_iteration"] == str(sel["best_iteration"])
