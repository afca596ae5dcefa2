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
        futures = submit_shards(recipe, store, model, stage=stage, split=split, iteration=iteration, gen=gen,
                                runner=runner, expert=expert)
        return combine_shards(futures, recipe, store, model, stage=stage, split=split, iteration=iteration, gen=gen,
                              tracker=tracker, parent=parent, expert=expert)


def submit_shards(
    recipe: Recipe, store: ArtifactStore, model: ArtifactRef, *, stage: RolloutStage, split: Split, iteration: int,
    gen: GenerationSettings, runner: Any, expert: ArtifactRef | None = None,
) -> list[Any]:
    """The rollout's unfinished shards, submitted to the runner (not awaited)."""
    shards = stages.pending_shards(recipe, store, model, stage=stage, split=split, iteration=iteration, gen=gen,
                                   expert=expert)
    return [runner.submit(shard_task, {"recipe": recipe, "store": store, "model": model, "shard": s})
            for s in shards]


def combine_shards(
    futures: list[Any], recipe: Recipe, store: ArtifactStore, model: ArtifactRef, *, stage: RolloutStage,
    split: Split, iteration: int, gen: GenerationSettings, tracker: Tracker | None, parent: str | None,
    expert: ArtifactRef | None = None,
) -> stages.StageResult:
    """Wait for the submitted shards, then the one task that combines the rollout's shards."""
    for future in futures:
        future.result()  # raises the shard's error, if any
    return rollout_task(recipe, store, model, stage=stage, split=split, iteration=iteration, gen=gen,
                        tracker=tracker, parent=parent, expert=expert)


def evaluate_policy(
    recipe: Recipe, store: ArtifactStore, model: ArtifactRef, *, stage: str, iteration: int,
    tracker: Tracker | None, parent: str | None, runner: Any, clock: StageClock | None = None,
) -> list[EvalSummary]:
    """The policy's summaries on the seen and unseen splits, labelled ``stage`` (base, sft, dpo...).

    Both splits' shards are submitted before either is awaited, so with ``runner.workers`` >= 2
    the seen and unseen evaluations run side by side (on CPU, decoding is bound by memory
    traffic: two 1-thread shards on two cores get more done than one 2-thread shard). The
    clock's seen entry runs until the seen results are in, the unseen entry from there until
    the unseen ones are: their sum is the evaluation's wall time."""
    out = []
    futures: dict[Split, list[Any]] = {}
    for split in EVAL_SPLITS:
        with StageClock.timing(clock, f"evaluate-{split}-iter{iteration}"):
            if not futures:
                futures = {s: submit_shards(recipe, store, model, stage="evaluate", split=s, iteration=iteration,
                                            gen=recipe.evaluate, runner=runner) for s in EVAL_SPLITS}
            result = combine_shards(futures[split], recipe, store, model, stage="evaluate", split=split,
                                    iteration=iteration, gen=recipe.evaluate, tracker=tracker, parent=parent)
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
