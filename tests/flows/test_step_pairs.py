"""Step-level pairs through the flow: continuations from expert prefixes, tracked and trained on."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from eto_core.config import load_recipe
from eto_core.records import frame_to_pairs, read_records

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_step_level_iteration_trains_on_continuation_pairs_only(tmp_path: Path, prefect_harness: None) -> None:
    from flows.pipeline import eto_pipeline

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = load_recipe(ROOT / "recipes" / "mini.yaml", [
        f"storage.root={tmp_path / 'artifacts'}", f"tracking.mlflow_uri={uri}", "pairs.level=step"])
    out = eto_pipeline(recipe, state_dir=str(tmp_path / "state"))
    assert {s["iteration"] for s in out["summaries"]} == {0, 1}
    artifacts = tmp_path / "artifacts"
    assert not (artifacts / "explore").exists()  # 'step' alone explores no whole trajectories
    (pairs_file,) = (artifacts / "pairs").glob("*/pairs.parquet")
    pairs = frame_to_pairs(read_records(pairs_file, "pairs"))
    assert pairs and {p.kind for p in pairs} == {"step"}
    assert all(p.prompt[-1]["role"] == "user" and any(m["role"] == "assistant" for m in p.prompt[3:]) for p in pairs)

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(recipe.tracking.experiment)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    names = {r.info.run_name for r in runs}
    assert {"explore_step-train-iter1", "pairs-iter1", "dpo-iter1"} <= names
    parent = client.get_run(out["mlflow_run_id"])
    assert parent.data.metrics["pairs_step"] == len(pairs)
    assert parent.data.tags["eto.method"] == "eto-step"  # how `eto compare` tells it from plain ETO


def test_no_expert_baselines_refuse_step_level_pairs(tmp_path: Path, prefect_harness: None) -> None:
    from flows.baselines import baseline_flow

    recipe = load_recipe(ROOT / "recipes" / "mini.yaml", [
        f"storage.root={tmp_path / 'artifacts'}", f"tracking.mlflow_uri=sqlite:///{tmp_path / 'm.db'}",
        "pairs.level=both", "pairs.samples_per_task=2", "explore.temperature=0.7"])
    with pytest.raises(ValueError, match="pairs.level: trajectory"):
        baseline_flow(recipe, "eto-no-sft", state_dir=str(tmp_path / "state"))


def test_method_labels_tell_the_variants_apart() -> None:
    from flows.pipeline import eto_method

    def label(*overrides: str) -> str:
        return eto_method(load_recipe(ROOT / "recipes" / "mini.yaml", list(overrides)))

    assert label() == "eto"
    assert label("pairs.level=both") == "eto-step+traj"
    assert label("dpo.sft_weight=0.5", "selection.split=dev") == "eto-sftw0.5-select"
    assert label("pairs.samples_per_task=3", "explore.temperature=0.7", "pairs.self_pairs=true",
                 "pairs.level=step") == "eto-k3-self-step"
