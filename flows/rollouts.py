"""Rollouts as the flows run them: pending shards fan out as tasks on the task runner, then one
task combines them. Evaluation (seen and unseen) and the selection score are rollouts too."""

from __future__ import annotations

from typing import Any

from eto_core import stages
from eto_core.config import Recipe
from eto_core.policy import GenerationSettings
from eto_core.records import EvalSummary
from eto_core.stage_names import EVAL_SPLITS, RolloutStage, Split
from eto_core.storage import ArtifactRef, ArtifactStore
from eto_core.tracking import Tracker
from flows.stage_clock import StageClock
from tasks.stage_tasks import rollout_task, shard_task


def rollout(
    recipe: Recipe, store: ArtifactStore, model: ArtifactRef, *, stage: RolloutStage, split: Split, iteration: int,
    gen: GenerationSettings, tracker: Tracker | None, parent: str | None, runner: Any,
    expert: ArtifactRef | None = None, clock: StageClock | None = None,
) -> stages.StageResult:
    """A rollout whose unfinished shards run as tasks on the task runner (in parallel where it
    has workers), then one task that combines them. Submitted from the flow, not from inside a
    task: a task's context (with its parameters) travels to Dask/Ray workers with each shard.
    ``expert``: only for stage "explore_step" (continuations from the expert's prefixes)."""
    with StageClock.timing(clock, f"{stage}-{split}-iter{iteration}"):
        shards = stages.pending_shards(recipe, store, model, stage=stage, split=split, iteration=iteration, gen=gen,
                                       expert=expert)
        futures = [runner.submit(shard_task, {"recipe": recipe, "store": store, "model": model, "shard": s})
                   for s in shards]
        for future in futures:
            future.result()  # raises the shard's error, if any
        return rollout_task(recipe, store, model, stage=stage, split=split, iteration=iteration, gen=gen,
                            tracker=tracker, parent=parent, expert=expert)


def evaluate_policy(
    recipe: Recipe, store: ArtifactStore, model: ArtifactRef, *, stage: str, iteration: int,
    tracker: Tracker | None, parent: str | None, runner: Any, clock: StageClock | None = None,
) -> list[EvalSummary]:
    """The policy's summaries on the seen and unseen splits, labelled ``stage`` (base, sft, dpo...)."""
    out = []
    for split in EVAL_SPLITS:
        result = rollout(recipe, store, model, stage="evaluate", split=split, iteration=iteration,
                         gen=recipe.evaluate, tracker=tracker, parent=parent, runner=runner, clock=clock)
        summary = stages.rollout_summary(result)
        summary.stage = stage
        out.append(summary)
    return out


def selection_score(
    recipe: Recipe, store: ArtifactStore, model: ArtifactRef, iteration: int, tracker: Tracker | None,
    parent: str | None, runner: Any, clock: StageClock | None = None,
) -> float:
    """The policy's score on the selection split (recipe.selection), for choosing the iteration."""
    result = rollout(recipe, store, model, stage="select", split=stages.selection_split(recipe), iteration=iteration,
                     gen=recipe.evaluate, tracker=tracker, parent=parent, runner=runner, clock=clock)
    summary = stages.rollout_summary(result)
    return summary.avg_reward if recipe.selection.metric == "avg_reward" else summary.success_rate
