"""The ETO pipeline as Prefect flows.

``eto_pipeline``: one flow run = expert data + SFT + seen/unseen evaluation, then N iterations
of explore -> pairs -> DPO -> evaluation, each stage a cached task; one MLflow parent run with a
nested run per stage. ``sft_flow`` and ``eto_iteration_flow`` run parts on their own.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from eto_core import stages
from eto_core.config import Recipe
from eto_core.evaluation import results_table
from eto_core.lifecycle import stop_reason
from eto_core.policy import GenerationSettings
from eto_core.records import EvalSummary
from eto_core.selection import choose_iteration
from eto_core.stage_names import EVAL_SPLITS, RolloutStage, Split
from eto_core.storage import ArtifactRef, ArtifactStore
from eto_core.tracking import MLFLOW_RETRY_DEFAULTS, Tracker, is_unreachable, lost_server_error, reward_plot
from tasks.runners import make_task_runner
from tasks.stage_tasks import (
    dpo_task,
    expert_task,
    model_init_task,
    pairs_task,
    rollout_task,
    sft_task,
    shard_task,
    summary_of,
)


def rollout(
    recipe: Recipe, store: ArtifactStore, model: ArtifactRef, *, stage: RolloutStage, split: Split, iteration: int,
    gen: GenerationSettings, tracker: Tracker | None, parent: str | None, runner: Any,
    expert: ArtifactRef | None = None,
) -> stages.StageResult:
    """A rollout whose unfinished shards run as tasks on the task runner (in parallel where it
    has workers), then one task that combines them. Submitted from the flow, not from inside a
    task: a task's context (with its parameters) travels to Dask/Ray workers with each shard.
    ``expert``: only for stage "explore_step" (continuations from the expert's prefixes)."""
    shards = stages.pending_shards(recipe, store, model, stage=stage, split=split, iteration=iteration, gen=gen,
                              expert=expert)
    futures = [runner.submit(shard_task, {"recipe": recipe, "store": store, "model": model, "shard": s})
               for s in shards]
    for future in futures:
        future.result()  # raises the shard's error, if any
    return rollout_task(recipe, store, model, stage=stage, split=split, iteration=iteration, gen=gen,
                        tracker=tracker, parent=parent, expert=expert)


def _select_score(
    recipe: Recipe, store: ArtifactStore, model: ArtifactRef, iteration: int, tracker: Tracker | None,
    parent: str | None, runner: Any,
) -> float:
    """The policy's score on the selection split (recipe.selection), for choosing the iteration."""
    result = rollout(recipe, store, model, stage="select", split=stages.selection_split(recipe), iteration=iteration,
                      gen=recipe.evaluate, tracker=tracker, parent=parent, runner=runner)
    summary = summary_of(result)
    return summary.avg_reward if recipe.selection.metric == "avg_reward" else summary.success_rate


def evaluate_policy(
    recipe: Recipe, store: ArtifactStore, model: ArtifactRef, *, stage: str, iteration: int,
    tracker: Tracker | None, parent: str | None, runner: Any,
) -> list[EvalSummary]:
    out = []
    for split in EVAL_SPLITS:
        result = rollout(recipe, store, model, stage="evaluate", split=split, iteration=iteration,
                          gen=recipe.evaluate, tracker=tracker, parent=parent, runner=runner)
        summary = summary_of(result)
        summary.stage = stage
        out.append(summary)
    return out


def eto_iteration(
    recipe: Recipe, store: ArtifactStore, expert: ArtifactRef | None, policy: ArtifactRef, iteration: int,
    tracker: Tracker | None, parent: str | None, flow_run_id: str, runner: Any, stop_without_pairs: bool = False,
) -> tuple[stages.StageResult, stages.StageResult | None, list[EvalSummary]]:
    """One ETO iteration. With ``stop_without_pairs``, an exploration that yields no pair ends it
    before DPO (new policy None) instead of failing: for methods where that is an outcome."""
    level = recipe.pairs.level
    explored = step = None
    if level in ("trajectory", "both"):
        explored = rollout(recipe, store, policy, stage="explore", split="train", iteration=iteration,
                           gen=recipe.explore, tracker=tracker, parent=parent, runner=runner).ref
    if level in ("step", "both"):
        step = rollout(recipe, store, policy, stage="explore_step", split="train", iteration=iteration,
                       gen=recipe.explore, tracker=tracker, parent=parent, runner=runner,
                       expert=stages.need_expert(expert)).ref
    pairs = pairs_task(recipe, store, expert, explored, iteration, tracker=tracker, parent=parent, step=step)
    if stop_without_pairs and not stages.num_pairs(pairs):
        return pairs, None, []
    new_policy = dpo_task(recipe, store, policy, pairs.ref, iteration, tracker=tracker, parent=parent,
                          flow_run_id=flow_run_id)
    summaries = evaluate_policy(recipe, store, new_policy.ref, stage="dpo", iteration=iteration, tracker=tracker,
                          parent=parent, runner=runner)
    return pairs, new_policy, summaries


def current_flow_run_id() -> str:
    return str(flow_run.get_id() or "")


@flow(name="eto-pipeline", log_prints=True)
def eto_pipeline(recipe: Recipe, state_dir: str = ".eto") -> dict[str, Any]:
    """SFT on expert trajectories, then ``recipe.iterations`` rounds of ETO, evaluated on seen/unseen."""
    logger = get_run_logger()
    started = time.perf_counter()
    refuse_endpoint_backend(recipe)
    for key, value in MLFLOW_RETRY_DEFAULTS.items():  # bounded retries, also for deployment runs
        os.environ.setdefault(key, value)
    store = stages.make_store(recipe, state_dir)
    store.check()  # an unreachable or misconfigured S3 root fails here, naming the setting
    for folder in store.remove_stale_staging():
        logger.info("removed %s, left by a crashed run", folder)
    tracker = Tracker(recipe.tracking.mlflow_uri, recipe.tracking.experiment)
    flow_run_id = current_flow_run_id()
    parent = tracker.start_run(f"{recipe.name}", tags={"prefect.flow_run_id": flow_run_id, "eto.recipe": recipe.name,
                                                       "eto.env": recipe.env.name, "eto.method": eto_method(recipe),
                                                       "eto.seed": str(recipe.seed)})
    status = "FAILED"
    # Started once per flow run (a Dask cluster takes seconds), stopped with it whatever happens.
    shard_workers = ExitStack()
    try:
        runner = shard_workers.enter_context(make_task_runner(recipe.runner))
        tracker.log_params(parent, recipe.model_dump(mode="json"))

        expert = expert_task(recipe, store, tracker=tracker, parent=parent)
        base = model_init_task(recipe, store, expert.ref, tracker=tracker, parent=parent)
        base_summaries: list[EvalSummary] = []
        if recipe.evaluate_base:  # the zero-shot row, before SFT changes anything
            base_summaries = evaluate_policy(recipe, store, base.ref, stage="base", iteration=0, tracker=tracker,
                                             parent=parent, runner=runner)
        sft = sft_task(recipe, store, base.ref, expert.ref, tracker=tracker, parent=parent, flow_run_id=flow_run_id)
        summaries = evaluate_policy(recipe, store, sft.ref, stage="sft", iteration=0, tracker=tracker, parent=parent,
                              runner=runner)
        stage_metrics: dict[str, float] = {**expert.metrics, **base.metrics, **sft.metrics}
        for s in base_summaries:  # beside iteration 0 (SFT), not as a step of its own
            stage_metrics.update({f"base_{s.split}_avg_reward": s.avg_reward,
                                  f"base_{s.split}_success_rate": s.success_rate})
        versions = {0: sft.info.get("model_version")}
        policy = sft
        sel = recipe.selection
        select_metric = f"select_{sel.metric}"
        scores: list[float] = []  # selection score of iteration i at index i (0 = SFT)
        models = {0: sft.ref}
        choice = None

        def select(model: ArtifactRef, iteration: int) -> None:
            score = _select_score(recipe, store, model, iteration, tracker, parent, runner)
            scores.append(score)
            tracker.log_metrics(parent, {select_metric: score}, step=iteration)
            if versions.get(iteration):
                tracker.client.set_model_version_tag(recipe.model_name, versions[iteration], select_metric,
                                                     f"{score:.4f}")

        if sel.split:
            select(sft.ref, 0)
        for iteration in range(1, recipe.iterations + 1):
            pairs, new_policy, iter_summaries = eto_iteration(recipe, store, expert.ref, policy.ref, iteration, tracker,
                                                           parent, flow_run_id, runner)
            assert new_policy is not None  # without stop_without_pairs, no pairs is an error
            policy = new_policy
            summaries += iter_summaries
            tracker.log_metrics(parent, {**pairs.metrics, **policy.metrics}, step=iteration)
            versions[iteration] = policy.info.get("model_version")
            models[iteration] = policy.ref
            if sel.split:
                select(policy.ref, iteration)
                choice = choose_iteration(scores, patience=sel.patience, min_delta=sel.min_delta)
                logger.info("selection (%s on %s): %s", sel.metric, sel.split, choice.reason)
                if choice.stop and iteration < recipe.iterations:
                    tracker.set_tags(parent, {"eto.stopped_early_after": str(iteration)})
                    break
        if sel.split:
            choice = choose_iteration(scores, patience=sel.patience, min_delta=sel.min_delta)
            tracker.set_tags(parent, {"eto.best_iteration": str(choice.best_iteration),
                                      "eto.selection": choice.reason})

        tracker.log_summaries(parent, summaries)
        for s in summaries:
            version = versions.get(s.iteration)
            if version:
                tracker.client.set_model_version_tag(recipe.model_name, version, f"{s.split}_avg_reward", f"{s.avg_reward:.4f}")
                tracker.client.set_model_version_tag(recipe.model_name, version, f"{s.split}_success_rate", f"{s.success_rate:.4f}")
        # The champion alias moves, in iteration order, only to a version that beats it on the
        # selection split (or, without one, on seen).
        for iteration, version in sorted(versions.items()):
            if version:
                decision = (tracker.promote_if_better(recipe.model_name, version, metric=select_metric) if sel.split
                            else tracker.promote_if_better(recipe.model_name, version))
                champion = decision.candidate if decision.promoted else decision.champion
                tracker.set_tags(parent, {f"eto.champion.iter{iteration}": decision.reason,
                                          "eto.champion_version": str(champion)})
                logger.info("champion %s: %s", "moved" if decision.promoted else "kept", decision.reason)
        tracker.log_metrics(parent, stage_metrics)
        table = results_table(base_summaries + summaries)
        fig = reward_plot(summaries, f"ETO on {recipe.env.name} ({recipe.name})", baseline=base_summaries)
        tracker.log_figure(parent, fig, "reward_per_iteration.png")
        tracker.log_text(parent, table, "results.md")
        create_markdown_artifact(
            key=f"eto-results-{recipe.name}".lower().replace("_", "-"),
            markdown=f"# ETO results: {recipe.name} on {recipe.env.name}\n\n{table}\n",
            description="Average reward and success rate per iteration on seen/unseen tasks",
        )
        elapsed = time.perf_counter() - started
        tracker.log_metrics(parent, {"pipeline_seconds": elapsed})
        logger.info("ETO results (%s):\n%s", recipe.name, table)
        status = "FINISHED"
        return {
            "table": table,
            "summaries": [asdict(s) for s in base_summaries + summaries],
            "mlflow_run_id": parent,
            "final_model": policy.ref.to_dict(),
            "model_versions": versions,
            "seconds": elapsed,
            "selection": None if choice is None else {
                "scores": scores, "best_iteration": choice.best_iteration,
                "best_model": models[choice.best_iteration].to_dict(), "reason": choice.reason},
        }
    except Exception as exc:
        if is_unreachable(exc):
            raise lost_server_error(recipe.tracking.mlflow_uri, exc) from exc
        raise
    except BaseException as exc:
        status = ended_status(exc)
        raise
    finally:
        shard_workers.close()
        try:
            if status != "FINISHED":
                tracker.end_open_children(parent, status)
            tracker.end_run(parent, status=status)
        except Exception as exc:  # the server may be the thing that failed: keep the first error
            if not is_unreachable(exc):
                raise
            logger.warning("could not mark MLflow run %s %s: %s", parent, status, str(exc).splitlines()[0][:200])


def ended_status(exc: BaseException) -> str:
    """The MLflow status of a run that ``exc`` ended: KILLED when the process was told to stop
    (SIGTERM, SIGINT), FAILED otherwise."""
    return "KILLED" if stop_reason(exc) is not None else "FAILED"


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
        raise
    finally:
        if status != "FINISHED":
            tracker.end_open_children(parent, status)
        tracker.end_run(parent, status=status)
