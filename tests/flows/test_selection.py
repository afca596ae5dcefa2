"""Iteration selection on held-out training tasks, early stopping and the champion alias, with
k sampled trajectories per task and pairs among them, on the mini recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from eto_core import stages
from eto_core.config import load_recipe
from eto_core.records import read_records
from eto_core.selection import choose_iteration

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


# The selection scores the flow sees, by iteration: SFT, a gain, then a certain decline. (The
# mini model's real scores are all 0, where a tie with SFT stops after iteration 1 and nothing
# is ever picked over SFT.) Iteration 3 would be a new best: running it means no stop.
SCRIPTED_SCORES = {0: 0.5, 1: 0.6, 2: 0.4, 3: 0.9}


def test_selection_picks_the_champion_and_stops_when_it_declines(
    tmp_path: Path, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.pipeline as flow_module
    from flows.pipeline import eto_pipeline

    real_select_score = flow_module.selection_score
    scored: list[int] = []

    def scripted_select_score(recipe: Any, store: Any, model: Any, iteration: int, *args: Any) -> float:
        real_select_score(recipe, store, model, iteration, *args)  # the selection rollout still runs
        scored.append(iteration)
        return SCRIPTED_SCORES[iteration]

    # By the selection rule itself: iteration 1 is a gain (go on), iteration 2 a decline (stop).
    assert not choose_iteration([0.5, 0.6], patience=1).stop
    assert choose_iteration([0.5, 0.6, 0.4], patience=1).stop
    monkeypatch.setattr(flow_module, "selection_score", scripted_select_score)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = load_recipe(ROOT / "recipes" / "mini.yaml", [
        f"storage.root={tmp_path / 'artifacts'}", f"tracking.mlflow_uri={uri}", "iterations=3",
        "selection.split=train_holdout", "selection.tasks=4", "selection.patience=1",
        "pairs.samples_per_task=2", "pairs.self_pairs=true", "explore.temperature=0.9"])
    out = eto_pipeline(recipe, state_dir=str(tmp_path / "state"))
    sel = out["selection"]
    scores = sel["scores"]
    # Iteration 1 beats SFT, iteration 2 declines: with patience 1 the loop stops there, before
    # iteration 3, and iteration 1 is the champion.
    assert scored == [0, 1, 2]
    assert scores == [0.5, 0.6, 0.4]
    ran = len(scores) - 1
    assert ran == 2
    assert sel["best_iteration"] == 1 and "stop" in sel["reason"]
    assert sel["best_model"] != out["final_model"]  # the champion is not the last policy trained
    assert {s["iteration"] for s in out["summaries"]} == {0, 1, 2}

    # The held-out tasks follow the training tasks and are never trained on.
    held_out = stages.split_tasks(recipe, "train", "select")
    assert held_out == stages.env_factory(recipe)().tasks("train")[12:16]
    select_trajs = sorted((tmp_path / "artifacts" / "select").glob("*/trajectories.parquet"))
    assert len(select_trajs) == ran + 1
    # Exploration sampled two trajectories per task.
    explored = read_records(next((tmp_path / "artifacts" / "explore").glob("*/trajectories.parquet")), "trajectories")
    assert len(explored) == 2 * 12 and explored["task_id"].value_counts().eq(2).all()

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias(recipe.model_name, "champion")
    assert str(champion.version) == str(out["model_versions"][sel["best_iteration"]])
    assert float(champion.tags["select_avg_reward"]) == pytest.approx(max(scores), abs=1e-4)
    parent = client.get_run(out["mlflow_run_id"])
    assert parent.data.tags["eto.best_iteration"] == "1"
    assert parent.data.tags["eto.stopped_early_after"] == "2"
