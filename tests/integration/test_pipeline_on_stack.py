"""The mini recipe on the real stack, through `eto run`: artifacts on S3, tracking on the MLflow
server, flow and task runs on the Prefect server, task results and cache records on S3; then the
same flow as a deployment, run by a process worker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from mlflow import MlflowClient

from eto_core.config import load_recipe
from infra import stack as S
from tests.integration.conftest import ROOT, Stack, eto

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGES = {"expert", "model_init", "sft", "explore", "pairs", "dpo", "evaluate"}


@dataclass(frozen=True)
class MiniRuns:
    first: dict[str, Any]
    second: dict[str, Any]
    objects_after_first: set[str]
    objects_after_second: set[str]


def _s3(stack: Stack) -> Any:
    return boto3.client("s3", endpoint_url=stack.config.s3_endpoint_url, region_name=stack.config.region,
                        aws_access_key_id=stack.env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=stack.env["AWS_SECRET_ACCESS_KEY"])


def _keys(stack: Stack, prefix: str = "") -> set[str]:
    pages = _s3(stack).get_paginator("list_objects_v2").paginate(Bucket=stack.config.bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def _run_mini(stack: Stack, state: Path, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    done = eto("run", "--config", "recipes/mini.yaml", "--artifact-root", stack.config.artifact_root,
               "--set", f"storage.s3_endpoint_url={stack.config.s3_endpoint_url}",
               "--mlflow-uri", stack.config.mlflow_uri, "--state-dir", str(state), "--json", str(out), env=stack.env)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    result = dict(json.loads(out.read_text()))
    result["process_seconds"] = time.perf_counter() - started
    return result


@pytest.fixture(scope="module")
def mini(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> MiniRuns:
    work = tmp_path_factory.mktemp("mini")
    first = _run_mini(stack, work / "state", work / "first.json")
    after_first = _keys(stack)
    second = _run_mini(stack, work / "state", work / "second.json")
    return MiniRuns(first, second, after_first, _keys(stack))


@contextmanager
def _prefect(stack: Stack) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.config.prefect_api_url}), \
            get_client(sync_client=True) as client:
        yield client


def _task_states(stack: Stack, flow_run_id: str) -> dict[str, str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with _prefect(stack) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: f"{r.state.type.value}:{r.state.name}" for r in runs if r.state is not None}


def test_every_artifact_is_in_the_bucket(stack: Stack, mini: MiniRuns) -> None:
    s3 = _s3(stack)
    keys = mini.objects_after_first
    manifests = [k for k in keys if k.startswith("artifacts/") and k.endswith("/manifest.json")]
    # every stage, and the checkpointed shards of the rollout stages
    assert {k.split("/")[1] for k in manifests} == STAGES | {"explore_shard", "evaluate_shard"}
    for key in manifests:
        manifest = json.loads(s3.get_object(Bucket=stack.config.bucket, Key=key)["Body"].read())
        folder = key.removesuffix("manifest.json")
        assert {folder + rel for rel in manifest["files"]} <= keys, f"{folder}: files missing from the bucket"
    # the final model as reported by the run is one of them
    assert mini.first["final_model"]["uri"].startswith(f"s3://{stack.config.bucket}/artifacts/dpo/")
    # MLflow's artifacts went through the server's proxy into the bucket: the logged models and the plot
    assert any(k.startswith("mlflow/") and k.endswith("/model/model.safetensors") for k in keys)
    assert any(k.endswith("/reward_per_iteration.png") for k in keys)


def test_mlflow_runs_metrics_model_versions_and_champion(stack: Stack, mini: MiniRuns) -> None:
    client = MlflowClient(tracking_uri=stack.config.mlflow_uri, registry_uri=stack.config.mlflow_uri)
    parent = client.get_run(mini.first["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert {"seen_avg_reward", "unseen_avg_reward", "pairs_lose", "pipeline_seconds"} <= set(parent.data.metrics)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {"expert", "sft", "explore", "pairs", "dpo", "evaluate"} <= {r.data.tags["eto.stage"] for r in children}

    # trajectory and pair datasets are inputs of the stage runs, sourced at their s3:// artifacts
    inputs = {(r.data.tags["eto.stage"], d.dataset.name): json.loads(d.dataset.source)["uri"]
              for r in children for d in r.inputs.dataset_inputs}
    for key in (("expert", "expert-trajectories"), ("sft", "expert-trajectories"), ("explore", "explore-iter1"),
                ("pairs", "pairs-iter1"), ("dpo", "pairs-iter1")):
        assert inputs[key].startswith(f"s3://{stack.config.bucket}/artifacts/"), key

    name = load_recipe(ROOT / "recipes" / "mini.yaml").model_name
    versions = {v.tags["iteration"]: v for v in client.search_model_versions(f"name='{name}'")}
    assert set(versions) == {"0", "1"}
    flow_run_id = parent.data.tags["prefect.flow_run_id"]
    for v in versions.values():
        for tag in ("env", "seen_avg_reward", "unseen_avg_reward", "artifact_digest", "champion_decision"):
            assert tag in v.tags, tag
        assert v.tags["prefect_flow_run_id"] == flow_run_id
        assert v.source.startswith("mlflow-artifacts:/")
    assert "data.expert_digest" in versions["0"].tags and "data.pairs_digest" in versions["1"].tags

    # SFT is the first champion; iteration 1 took the alias only if it scored higher on seen
    champion = client.get_model_version_by_alias(name, "champion")
    better = float(versions["1"].tags["seen_avg_reward"]) > float(versions["0"].tags["seen_avg_reward"])
    assert str(champion.version) == str((versions["1"] if better else versions["0"]).version)
    assert parent.data.tags["eto.champion_version"] == str(champion.version)
    assert "first champion" in parent.data.tags["eto.champion.iter0"]

    compare = eto("models", "compare", name, "--mlflow-uri", stack.config.mlflow_uri, env=stack.env)
    assert compare.returncode == 0, compare.stderr
    table = compare.stdout
    assert "| version | aliases |" in table and "champion" in table and "sft_last_loss=" in table


def test_prefect_flow_run_and_task_runs_completed(stack: Stack, mini: MiniRuns) -> None:
    client = MlflowClient(tracking_uri=stack.config.mlflow_uri)
    flow_run_id = client.get_run(mini.first["mlflow_run_id"]).data.tags["prefect.flow_run_id"]
    with _prefect(stack) as prefect:
        flow_run = prefect.read_flow_run(flow_run_id)
    assert flow_run.state is not None and flow_run.state.is_completed()
    states = _task_states(stack, flow_run_id)
    stages = {name: s for name, s in states.items() if "-shard" not in name}
    assert len(stages) == 10  # expert, init, sft, 2 evals, explore, pairs, dpo, 2 evals
    # and each rollout's one shard (mini: fewer tasks than a shard) ran as its own task
    assert sorted(n for n in states if "-shard" in n) == sorted(
        f"{n}-shard0" for n in stages if n.startswith(("explore-", "evaluate-")))
    assert all(s.startswith("COMPLETED") for s in states.values()), states


def test_second_run_reuses_every_stage_from_s3(stack: Stack, mini: MiniRuns) -> None:
    assert mini.second["summaries"] == mini.first["summaries"]
    assert mini.second["final_model"] == mini.first["final_model"]
    # no stage ran again: no new artifact, no new model files, no nested MLflow run, no new version
    new = mini.objects_after_second - mini.objects_after_first
    assert not [k for k in new if k.startswith("artifacts/")], new
    assert not [k for k in new if "/model/" in k], new
    client = MlflowClient(tracking_uri=stack.config.mlflow_uri, registry_uri=stack.config.mlflow_uri)
    parent = client.get_run(mini.second["mlflow_run_id"])
    assert client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'") == []
    assert mini.second["model_versions"] == {"0": None, "1": None}
    assert mini.second["seconds"] < mini.first["seconds"]
    # and Prefect's cache records for every stage now live in the bucket, beside the task results
    records = {k.split("/")[1].split("-")[1] for k in _keys(stack, "prefect-results/eto-")}
    assert records == STAGES


def test_deployment_runs_on_a_process_worker(stack: Stack, mini: MiniRuns, tmp_path: Path) -> None:
    deployed = eto("stack", "deploy", "--state-dir", str(stack.state_dir), env=stack.env)
    assert deployed.returncode == 0, f"{deployed.stdout[-3000:]}\n{deployed.stderr[-3000:]}"
    from prefect.deployments import run_deployment

    with _prefect(stack) as prefect:
        names = {d.name for d in prefect.read_deployments()}
        assert {"eto-mini", "eto-default", "eto-default-retrain", "eto-baseline-default", "eto-compare"} <= names
        retrain = prefect.read_deployment_by_name("eto-pipeline/eto-default-retrain")
        assert [s.schedule.cron for s in retrain.schedules] == ["0 3 * * 1"]  # type: ignore[union-attr]
        assert prefect.read_work_pool("eto-process").type == "process"
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.config.prefect_api_url}):
        flow_run = run_deployment("eto-pipeline/eto-mini", parameters={"state_dir": str(tmp_path / "state")},
                                  timeout=0)
    # One polling round: the worker picks the scheduled run, runs it to the end, and exits.
    worker = subprocess.run(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "eto-process", "--run-once", "--limit", "1"],
        cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=400, check=False,
    )
    with _prefect(stack) as prefect:
        final = prefect.read_flow_run(flow_run.id)
    assert final.state is not None and final.state.is_completed(), f"{final.state}\n{worker.stdout[-4000:]}"
    # The earlier `eto run`s left every task's result and cache record on S3: the worker's
    # process, with its own Prefect home and local state, gets them all from there.
    states = _task_states(stack, str(flow_run.id))
    assert len(states) == 10 and all(s == "COMPLETED:Cached" for s in states.values()), states


def test_stack_env_points_at_the_running_stack(stack: Stack) -> None:
    out = eto("stack", "env", "--state-dir", str(stack.state_dir), env=stack.env)
    assert out.returncode == 0
    assert f"export MLFLOW_TRACKING_URI={stack.config.mlflow_uri}" in out.stdout
    assert f"PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK={S.RESULT_BLOCK_SLUG}" in out.stdout
