"""One Prefect task per stage. Each is thin: call eto_core, log to MLflow, return a small result.

Cache keys are explicit (``eto_core.stages.keys.*_key``: stage settings + content digests of the
input artifacts + versions), so Prefect's cache and the artifact store agree on what "the same
stage" means. Models, stores and trackers are passed in but never hashed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from eto_core import stages
from eto_core.config import Recipe
from eto_core.policy import GenerationSettings
from eto_core.records import read_records
from eto_core.stage_names import RolloutStage, Split
from eto_core.storage import ArtifactRef, ArtifactStore
from eto_core.threads import torch_threads
from eto_core.tracking import Tracker


def _key(fn: Any, *names: str) -> Any:
    """A Prefect cache_key_fn from an eto_core key function applied to the task's parameters.

    It returns None (run the task) when the artifact behind the key is gone, so Prefect's cache
    never hands back a result that points at deleted files.
    """
    stage = fn.__name__.removesuffix("_key")

    def key_fn(_: TaskRunContext, params: dict[str, Any]) -> str | None:
        key = fn(params["recipe"], *(params.get(n) for n in names))
        store = params["store"]
        if store.find(store.uri_for(stage, key)) is None:
            return None
        return _prefect_key(store, stage, key)

    return key_fn


def _prefect_key(store: ArtifactStore, stage: str, key: str) -> str:
    """Prefect's cache is shared by every run on the same Prefect home or server, and a cached
    result names artifact URIs: so the key names the artifact root too."""
    root = hashlib.sha256(store.root.encode()).hexdigest()[:12]
    return f"eto-{stage}-{key}-{root}"


def _stage_run(
    tracker: Tracker | None, parent: str | None, result: stages.StageResult, name: str, params: dict[str, Any]
) -> str | None:
    """A nested MLflow run for a stage that ran, or that was reused but never reached MLflow (a
    crash or a tracking outage between publishing its artifact and logging it); a stage logged
    by the run that computed it is not logged again."""
    if tracker is None or parent is None:
        return None
    if result.cached and tracker.has_stage_run(result.ref.uri):
        return None
    run_id = tracker.start_run(name, parent=parent, tags={"eto.stage": result.stage, "eto.cached": str(result.cached),
                                                          "eto.artifact": result.ref.uri})
    tracker.log_params(run_id, params)
    tracker.log_metrics(run_id, result.metrics)
    history = result.info.get("log_history")
    if history:
        tracker.log_history(run_id, history, prefix="train")
    return run_id


def _log_records(
    tracker: Tracker | None, run_id: str | None, store: ArtifactStore, result: stages.StageResult,
    file: str, kind: str, name: str, context: str,
) -> None:
    """Log a stage's record file as an MLflow dataset input pointing at its artifact URI."""
    if tracker is None or run_id is None:
        return
    frame = read_records(store.fetch(result.ref) / file, kind)
    tracker.log_dataset(run_id, frame, name=name, source_uri=result.ref.uri, context=context)


def _finish(tracker: Tracker | None, run_id: str | None) -> None:
    if tracker is not None and run_id is not None:
        tracker.end_run(run_id)


# No print() -> log lines here either: ALFWorld's PDDL planner prints its whole search.
@task(name="expert-trajectories", cache_key_fn=_key(stages.expert_key), persist_result=True, log_prints=False)
def expert_task(recipe: Recipe, store: ArtifactStore, tracker: Tracker | None = None, parent: str | None = None) -> stages.StageResult:
    result = stages.expert_stage(recipe, store)
    run_id = _stage_run(tracker, parent, result, "expert", {"env": recipe.env.model_dump(), "data": recipe.data.model_dump()})
    _log_records(tracker, run_id, store, result, stages.TRAJ_FILE, "trajectories", "expert-trajectories", "training")
    _finish(tracker, run_id)
    return result


# Training tasks do not turn print() into log lines: datasets' fingerprinting (through dill)
# captures stdout around dis.dis to find a function's globals, and with Prefect's log_prints
# every line of that bytecode dump landed in the task's log instead.
@task(name="init-model", cache_key_fn=_key(stages.model_init_key, "expert"), persist_result=True, log_prints=False)
def model_init_task(
    recipe: Recipe, store: ArtifactStore, expert: ArtifactRef, tracker: Tracker | None = None, parent: str | None = None
) -> stages.StageResult:
    result = stages.model_init_stage(recipe, store, expert)
    run_id = _stage_run(tracker, parent, result, "init-model", {"model": recipe.model.model_dump()})
    _finish(tracker, run_id)
    result.info.pop("log_history", None)
    return result


def _log_model(
    tracker: Tracker | None, run_id: str | None, recipe: Recipe, store: ArtifactStore, result: stages.StageResult,
    *, stage: str, iteration: int, flow_run_id: str, data: dict[str, ArtifactRef],
) -> str | None:
    """Log the model folder and register it as a new version; returns the version.

    ``data`` names the input artifacts the model was trained from; their content digests become
    version tags, so a version traces back to exact data without opening its run.
    """
    if tracker is None or run_id is None or not recipe.tracking.log_models:
        return None
    folder = Path(stages.model_folder(store, result.ref))
    if not folder.is_dir():  # a hub id the user points at: nothing local to log
        return None
    # A LoRA policy is already merged into plain weights by the stage: these are files, never a
    # PeftModel through mlflow.transformers (which reloads the wrong weights).
    tracker.log_artifacts(run_id, folder, "model")
    return tracker.register_model(
        recipe.model_name, run_id, "model",
        tags={"env": recipe.env.name, "stage": stage, "iteration": str(iteration), "artifact": result.ref.uri,
              "artifact_digest": result.ref.digest, "prefect_flow_run_id": flow_run_id, "recipe": recipe.name,
              **{f"data.{name}_digest": ref.digest for name, ref in data.items()},
              **{f"data.{name}_uri": ref.uri for name, ref in data.items()}},
    )


def _log_input(
    tracker: Tracker | None, run_id: str | None, store: ArtifactStore, ref: ArtifactRef,
    file: str, kind: str, name: str,
) -> None:
    """Log the records a training run read as its MLflow dataset input (source: their artifact URI)."""
    if tracker is None or run_id is None:
        return
    frame = read_records(store.fetch(ref) / file, kind)
    tracker.log_dataset(run_id, frame, name=name, source_uri=ref.uri, context="training")


@task(name="sft", cache_key_fn=_key(stages.sft_key, "base", "expert"), persist_result=True, log_prints=False)
def sft_task(
    recipe: Recipe, store: ArtifactStore, base: ArtifactRef, expert: ArtifactRef,
    tracker: Tracker | None = None, parent: str | None = None, flow_run_id: str = "",
) -> stages.StageResult:
    result = stages.sft_stage(recipe, store, base, expert)
    run_id = _stage_run(tracker, parent, result, "sft", {"sft": recipe.sft.model_dump(), "seed": recipe.seed})
    _log_input(tracker, run_id, store, expert, stages.TRAJ_FILE, "trajectories", "expert-trajectories")
    version = _log_model(tracker, run_id, recipe, store, result, stage="sft", iteration=0, flow_run_id=flow_run_id,
                         data={"expert": expert, "base_model": base})
    result.info["model_version"] = version
    _finish(tracker, run_id)
    result.info.pop("log_history", None)
    return result


@task(name="rft", cache_key_fn=_key(stages.rft_key, "base", "expert", "explored"), persist_result=True, log_prints=False)
def rft_task(
    recipe: Recipe, store: ArtifactStore, base: ArtifactRef, expert: ArtifactRef | None, explored: ArtifactRef,
    tracker: Tracker | None = None, parent: str | None = None, flow_run_id: str = "",
) -> stages.StageResult:
    """SFT from the base model on the expert data plus the agent's own successes (RFT)."""
    result = stages.rft_stage(recipe, store, base, expert, explored)
    run_id = _stage_run(tracker, parent, result, "rft", {"sft": recipe.sft.model_dump(), "seed": recipe.seed,
                                                         "baselines": recipe.baselines.model_dump()})
    data = {"explored": explored, "base_model": base, **({"expert": expert} if expert is not None else {})}
    version = _log_model(tracker, run_id, recipe, store, result, stage="rft", iteration=0, flow_run_id=flow_run_id,
                         data=data)
    result.info["model_version"] = version
    _finish(tracker, run_id)
    result.info.pop("log_history", None)
    return result


def _rollout_key(_: TaskRunContext, params: dict[str, Any]) -> str | None:
    stage = params["stage"]
    key = stages.rollout_key(params["recipe"], params["model"], stage=stage, split=params["split"],
                        iteration=params["iteration"], gen=params["gen"], expert=params.get("expert"))
    store = params["store"]
    if store.find(store.uri_for(stage, key)) is None:
        return None
    return _prefect_key(store, stage, key)


@task(name="rollout-shard", task_run_name="{shard.stage}-{shard.split}-iter{shard.iteration}-shard{shard.index}",
      persist_result=False, log_prints=False)
def shard_task(recipe: Recipe, store: ArtifactStore, model: ArtifactRef, shard: stages.ShardSpec) -> stages.ShardOutcome:
    """One rollout shard, wherever the runner puts it (a thread here, a Dask or Ray worker)."""
    with torch_threads(recipe.runner.torch_threads):
        return stages.rollout_shard(recipe, store, model, shard)


@task(name="rollout", task_run_name="{stage}-{split}-iter{iteration}", cache_key_fn=_rollout_key, persist_result=True)
def rollout_task(
    recipe: Recipe, store: ArtifactStore, model: ArtifactRef, *, stage: RolloutStage, split: Split, iteration: int,
    gen: GenerationSettings, tracker: Tracker | None = None, parent: str | None = None,
    expert: ArtifactRef | None = None,
) -> stages.StageResult:
    """A whole rollout from its shards (run as ``shard_task``s just before, or here if missing);
    ``expert`` only for the step-level continuations (stage "explore_step")."""
    result = stages.rollout_stage(recipe, store, model, stage=stage, split=split, iteration=iteration, gen=gen,
                             expert=expert)
    run_id = _stage_run(tracker, parent, result, f"{stage}-{split}-iter{iteration}",
                        {"generation": gen.model_dump(), "split": split, "iteration": iteration})
    if stage in ("explore", "explore_step"):
        _log_records(tracker, run_id, store, result, stages.TRAJ_FILE, "trajectories", f"{stage}-iter{iteration}",
                     "exploration")
    _finish(tracker, run_id)
    return result


@task(name="pairs", task_run_name="pairs-iter{iteration}", cache_key_fn=_key(stages.pairs_key, "expert", "explored", "iteration", "step"), persist_result=True)
def pairs_task(
    recipe: Recipe, store: ArtifactStore, expert: ArtifactRef | None, explored: ArtifactRef | None, iteration: int,
    tracker: Tracker | None = None, parent: str | None = None, step: ArtifactRef | None = None,
) -> stages.StageResult:
    result = stages.pairs_stage(recipe, store, expert, explored, iteration, step)
    run_id = _stage_run(tracker, parent, result, f"pairs-iter{iteration}", {"cut_extra_rounds": recipe.pair_cut_extra_rounds})
    _log_records(tracker, run_id, store, result, stages.PAIRS_FILE, "pairs", f"pairs-iter{iteration}", "training")
    _finish(tracker, run_id)
    return result


@task(name="dpo", task_run_name="dpo-iter{iteration}", cache_key_fn=_key(stages.dpo_key, "model", "pairs", "iteration"), persist_result=True, log_prints=False)
def dpo_task(
    recipe: Recipe, store: ArtifactStore, model: ArtifactRef, pairs: ArtifactRef, iteration: int,
    tracker: Tracker | None = None, parent: str | None = None, flow_run_id: str = "",
) -> stages.StageResult:
    result = stages.dpo_stage(recipe, store, model, pairs, iteration)
    run_id = _stage_run(tracker, parent, result, f"dpo-iter{iteration}",
                        {"dpo": recipe.dpo_for_iteration(iteration).model_dump(), "iteration": iteration})
    _log_input(tracker, run_id, store, pairs, stages.PAIRS_FILE, "pairs", f"pairs-iter{iteration}")
    version = _log_model(tracker, run_id, recipe, store, result, stage="dpo", iteration=iteration, flow_run_id=flow_run_id,
                         data={"pairs": pairs, "reference_model": model})
    result.info["model_version"] = version
    _finish(tracker, run_id)
    result.info.pop("log_history", None)
    return result
