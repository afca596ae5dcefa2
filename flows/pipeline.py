"""The ETO pipeline as Prefect flows.

``eto_pipeline`` reads as the paper: expert trajectories, SFT, then N iterations of explore ->
pairs -> DPO, each policy evaluated on seen and unseen tasks. Every stage is a cached task
(tasks/stage_tasks.py); rollouts fan their shards out on the task runner (flows/rollouts.py);
MLflow runs, registry tags, iteration selection and the champion alias are kept by
``PipelineRun`` (flows/pipeline_run.py). ``sft_flow`` and ``eto_iteration_flow`` run parts on
their own, ``evaluate_flow`` scores one model or endpoint.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from eto_core import stages
from eto_core.config import Recipe
from eto_core.evaluation import results_table
from eto_core.records import EvalSummary
from eto_core.storage import ArtifactRef, ArtifactStore
from eto_core.tracking import MLFLOW_RETRY_DEFAULTS, Tracker
from flows.pipeline_run import PipelineRun, ended_status, raise_hidden_stop
from flows.rollouts import evaluate_policy, rollout, selection_score
from flows.stage_clock import StageClock
from tasks.runners import make_task_runner
from tasks.stage_tasks import dpo_task, expert_task, model_init_task, pairs_task, sft_task

__all__ = ["ended_status", "eto_iteration", "eto_method", "eto_pipeline", "evaluate_flow", "eto_iteration_flow",
           "refuse_endpoint_backend", "sft_flow"]


def eto_iteration(
    recipe: Recipe, store: ArtifactStore, expert: ArtifactRef | None, policy: ArtifactRef, iteration: int,
    tracker: Tracker | None, parent: str | None, flow_run_id: str, runner: Any, stop_without_pairs: bool = False,
    clock: StageClock | None = None,
) -> tuple[stages.StageResult, stages.StageResult | None, list[EvalSummary]]:
    """One ETO iteration: explore the training tasks, pair failures with successes, DPO, evaluate.

    Returns the pairs, the new policy and its seen/unseen summaries. With ``stop_without_pairs``,
    an exploration that yields no pair ends it before DPO (new policy None) instead of failing:
    for methods where that is an outcome."""
    level = recipe.pairs.level
    explored = step = None
    if level in ("trajectory", "both"):
        explored = rollout(recipe, store, policy, stage="explore", split="train", iteration=iteration,
                           gen=recipe.explore, tracker=tracker, parent=parent, runner=runner, clock=clock).ref
    if level in ("step", "both"):
        step = rollout(recipe, store, policy, stage="explore_step", split="train", iteration=iteration,
                       gen=recipe.explore, tracker=tracker, parent=parent, runner=runner,
                       expert=stages.need_expert(expert), clock=clock).ref
    with StageClock.timing(clock, f"pairs-iter{iteration}"):
        pairs = pairs_task(recipe, store, expert, explored, iteration, tracker=tracker, parent=parent, step=step)
    if stop_without_pairs and not stages.num_pairs(pairs):
        return pairs, None, []
    with StageClock.timing(clock, f"dpo-iter{iteration}"):
        new_policy = dpo_task(recipe, store, policy, pairs.ref, iteration, tracker=tracker, parent=parent,
                              flow_run_id=flow_run_id)
    summaries = evaluate_policy(recipe, store, new_policy.ref, stage="dpo", iteration=iteration, tracker=tracker,
                                parent=parent, runner=runner, clock=clock)
    return pairs, new_policy, summaries


def current_flow_run_id() -> str:
    return str(flow_run.get_id() or "")


def open_store(recipe: Recipe, state_dir: str) -> ArtifactStore:
    """The run's artifact store, checked (an unreachable or misconfigured S3 root fails here,
    naming the setting) and cleared of the staging folders a crashed run left."""
    store = stages.make_store(recipe, state_dir)
    store.check()
    for folder in store.remove_stale_staging():
        get_run_logger().info("removed %s, left by a crashed run", folder)
    return store


@flow(name="eto-pipeline", log_prints=True)
def eto_pipeline(recipe: Recipe, state_dir: str = ".eto") -> dict[str, Any]:
    """SFT on expert trajectories, then ``recipe.iterations`` rounds of ETO, evaluated on seen/unseen."""
    refuse_endpoint_backend(recipe)
    for key, value in MLFLOW_RETRY_DEFAULTS.items():  # bounded retries, also for deployment runs
        os.environ.setdefault(key, value)
    store = open_store(recipe, state_dir)
    flow_run_id = current_flow_run_id()
    run = PipelineRun(recipe, flow_run_id, eto_method(recipe), get_run_logger())
    tracker, parent, clock = run.tracker, run.parent, run.clock
    # Started once per flow run (a Dask cluster takes seconds), stopped with it whatever happens.
    shard_workers = ExitStack()
    try:
        runner = shard_workers.enter_context(make_task_runner(recipe.runner))
        run.log_params()

        def evaluate(model: stages.StageResult, label: str, iteration: int) -> list[EvalSummary]:
            return evaluate_policy(recipe, store, model.ref, stage=label, iteration=iteration, tracker=tracker,
                                   parent=parent, runner=runner, clock=clock)

        def score(model: ArtifactRef, iteration: int) -> float:
            return selection_score(recipe, store, model, iteration, tracker, parent, runner, clock)

        with clock.stage("expert"):
            expert = expert_task(recipe, store, tracker=tracker, parent=parent)
        with clock.stage("model_init"):
            base = model_init_task(recipe, store, expert.ref, tracker=tracker, parent=parent)
        # The zero-shot row, before SFT changes anything.
        base_summaries = evaluate(base, "base", 0) if recipe.evaluate_base else []
        with clock.stage("sft"):
            sft = sft_task(recipe, store, base.ref, expert.ref, tracker=tracker, parent=parent,
                           flow_run_id=flow_run_id)
        summaries = evaluate(sft, "sft", 0)
        run.record_model(0, sft)
        run.record_selection(0, score)

        policy = sft
        for iteration in range(1, recipe.iterations + 1):
            pairs, new_policy, iter_summaries = eto_iteration(recipe, store, expert.ref, policy.ref, iteration,
                                                              tracker, parent, flow_run_id, runner, clock=clock)
            assert new_policy is not None  # without stop_without_pairs, no pairs is an error
            policy = new_policy
            summaries += iter_summaries
            run.record_iteration(iteration, pairs, policy)
            if run.record_selection(iteration, score):
                break

        stage_metrics: dict[str, float] = {**expert.metrics, **base.metrics, **sft.metrics}
        return run.finish(base_summaries, summaries, stage_metrics, policy)
    except BaseException as exc:
        run.fail(exc)
        raise_hidden_stop(exc)
        raise
    finally:
        shard_workers.close()
        run.close()


def eto_method(recipe: Recipe) -> str:
    """The method label `eto compare` groups runs by: plain ETO, or ETO with k samples per task
    (and self pairs), step-level pairs ("-step": step only, "-step+traj": both), an SFT term in
    the DPO loss ("-sftw<weight>") and iteration selection ("-select")."""
    k = recipe.pairs.samples_per_task
    label = "eto" if k == 1 else f"eto-k{k}" + ("-self" if recipe.pairs.self_pairs else "")
    label += {"trajectory": "", "step": "-step", "both": "-step+traj"}[recipe.pairs.level]
    if recipe.dpo.sft_weight > 0:
        label += f"-sftw{recipe.dpo.sft_weight:g}"
    return label + ("-select" if recipe.selection.split else "")


def refuse_endpoint_backend(recipe: Recipe) -> None:
    if recipe.policy.backend == "openai":
        raise ValueError(
            "policy.backend 'openai' cannot drive training: the endpoint, not the pipeline, decides which model "
            "answers, so exploration would not be the trained policy's. Use `eto evaluate` to score an endpoint, "
            "or set policy.backend to hf or vllm."
        )


@flow(name="eto-sft", log_prints=True)
def sft_flow(recipe: Recipe, state_dir: str = ".eto") -> dict[str, Any]:
    """Expert data, SFT and its seen/unseen evaluation only."""
    refuse_endpoint_backend(recipe)
    store = stages.make_store(recipe, state_dir)
    expert = expert_task(recipe, store)
    base = model_init_task(recipe, store, expert.ref)
    sft = sft_task(recipe, store, base.ref, expert.ref)
    with make_task_runner(recipe.runner) as runner:
        summaries = evaluate_policy(recipe, store, sft.ref, stage="sft", iteration=0, tracker=None, parent=None,
                              runner=runner)
    return {"model": sft.ref.to_dict(), "table": results_table(summaries)}


@flow(name="eto-iteration", log_prints=True)
def eto_iteration_flow(
    recipe: Recipe, policy_uri: str, policy_digest: str, iteration: int = 1, state_dir: str = ".eto"
) -> dict[str, Any]:
    """One ETO iteration (explore -> pairs -> DPO -> eval) from a given policy artifact."""
    refuse_endpoint_backend(recipe)
    store = stages.make_store(recipe, state_dir)
    expert = expert_task(recipe, store)
    with make_task_runner(recipe.runner) as runner:
        _, new_policy, summaries = eto_iteration(recipe, store, expert.ref, ArtifactRef(policy_uri, policy_digest),
                                              iteration, None, None, current_flow_run_id(), runner)
    assert new_policy is not None
    return {"model": new_policy.ref.to_dict(), "table": results_table(summaries)}


@flow(name="eto-evaluate", log_prints=True)
def evaluate_flow(recipe: Recipe, model: str | None = None, state_dir: str = ".eto") -> dict[str, Any]:
    """Seen/unseen evaluation of one policy, tracked like a pipeline run: an OpenAI-compatible
    endpoint (``policy.backend: openai``) or a model folder / hub id (``model``), for baselines."""
    store = stages.make_store(recipe, state_dir)
    store.check()
    stages.check_splits(recipe)
    if recipe.policy.backend == "openai":
        if model:
            raise ValueError("--model names a local model but policy.backend is 'openai': the endpoint "
                             f"{recipe.policy.base_url} answers; drop --model or set policy.backend: hf.")
        ref = stages.endpoint_ref(recipe)
        label = f"{recipe.policy.model} @ {recipe.policy.base_url}"
    else:
        if not model:
            raise ValueError("eto evaluate needs --model (a model folder or hub id) unless policy.backend is 'openai'.")
        pointed = recipe.model_copy(update={"model": recipe.model.model_copy(update={"path": model})})
        ref = stages.model_init_stage(pointed, store, None).ref  # a pointer artifact, keyed by the weights
        label = model
    tracker = Tracker(recipe.tracking.mlflow_uri, recipe.tracking.experiment)
    parent = tracker.start_run(f"evaluate {label}", tags={"prefect.flow_run_id": current_flow_run_id(),
                                                           "eto.recipe": recipe.name, "eto.env": recipe.env.name,
                                                           "eto.evaluated": label, "eto.method": f"evaluated {label}",
                                                           "eto.seed": str(recipe.seed)})
    status = "FAILED"
    try:
        tracker.log_params(parent, {"policy": recipe.policy.key_fields(), "evaluate": recipe.evaluate.model_dump(),
                                    "data": recipe.data.model_dump()})
        with make_task_runner(recipe.runner) as runner:
            summaries = evaluate_policy(recipe, store, ref, stage="baseline", iteration=0, tracker=tracker, parent=parent,
                                  runner=runner)
        tracker.log_summaries(parent, summaries)
        table = results_table(summaries)
        tracker.log_text(parent, table, "results.md")
        create_markdown_artifact(key=f"eto-evaluate-{recipe.name}".lower().replace("_", "-"),
                                 markdown=f"# Evaluation: {label} on {recipe.env.name}\n\n{table}\n",
                                 description="Average reward and success rate on seen/unseen tasks")
        status = "FINISHED"
        return {"table": table, "summaries": [asdict(s) for s in summaries], "mlflow_run_id": parent,
                "evaluated": label}
    except BaseException as exc:
        status = ended_status(exc)
        raise_hidden_stop(exc)
        raise
    finally:
        tracker.close_run(parent, status, get_run_logger())
