"""The record stages: expert trajectories, and the failure/success pairs built from exploration."""

from __future__ import annotations

from eto_core.config import Recipe
from eto_core.eto_format import load_expert_file
from eto_core.experts import collect_expert
from eto_core.pairs import (
    build_pairs,
    build_step_pairs,
    strip_example,
)
from eto_core.records import (
    to_frame,
    write_records,
)
from eto_core.stages.artifacts import (
    PAIRS_FILE,
    StageResult,
    claim,
    publish,
    read_trajectories,
    write_trajectories,
)
from eto_core.stages.keys import expert_key, pair_cut, pairs_key, strips_example, training_one_shot
from eto_core.stages.splits import check_splits, env_factory, split_tasks
from eto_core.storage import ArtifactRef, ArtifactStore


def expert_stage(recipe: Recipe, store: ArtifactStore, *, progress: bool = True) -> StageResult:
    """Expert trajectories on the training tasks (from the env's expert or an ETO file)."""
    check_splits(recipe)  # before any training, and on every run: the check is cheap
    key = expert_key(recipe)
    with claim(store, "expert", key) as hit:
        if hit is not None:
            return hit
        if recipe.data.expert_file:
            trajs = load_expert_file(recipe.data.expert_file, env_factory(recipe), one_shot=training_one_shot(recipe),
                                     id_file=recipe.data.expert_id_file, limit=recipe.data.train_tasks)
            skipped: list[str] = []
        else:
            trajs, skipped = collect_expert(
                env_factory(recipe), split_tasks(recipe, "train", "expert"), env_name=recipe.env.name, split="train",
                one_shot=training_one_shot(recipe), progress=progress, max_env_retries=recipe.env.max_retries,
            )
        if not trajs:
            raise ValueError(f"no expert trajectory succeeded on environment '{recipe.env.name}'; check its expert.")
        folder = store.staging_dir()
        write_trajectories(folder, trajs)
        metrics = {
            "expert_trajectories": float(len(trajs)),
            "expert_skipped": float(len(skipped)),
            "expert_avg_reward": sum(t.reward for t in trajs) / len(trajs),
            "expert_mean_steps": sum(t.num_steps for t in trajs) / len(trajs),
        }
        return publish(store, "expert", key, folder, metrics, {"skipped": skipped[:50]})


def pairs_stage(
    recipe: Recipe, store: ArtifactStore, expert: ArtifactRef | None, explored: ArtifactRef | None, iteration: int,
    step: ArtifactRef | None = None,
) -> StageResult:
    """Failure/success pairs; without expert trajectories (``expert`` None), only pairs among the
    agent's own samples exist. ``explored``: whole explored trajectories (trajectory-level
    pairs); ``step``: continuations from expert prefixes (step-level pairs); either may be absent."""
    key = pairs_key(recipe, expert, explored, iteration, step)
    with claim(store, "pairs", key) as hit:
        if hit is not None:
            return hit
        experts = read_trajectories(store, expert) if expert is not None else []
        agent = read_trajectories(store, explored) if explored is not None else []
        if strips_example(recipe):  # explored with the example, paired (and trained) without it
            agent = [strip_example(t) for t in agent]
        pairs, stats = build_pairs(
            experts, agent, iteration=iteration, cut_extra_rounds=pair_cut(recipe),
            self_pairs=recipe.pairs.self_pairs or expert is None,
            skip_context_overflow=recipe.pairs.skip_context_overflow,
        )
        if step is not None:
            step_pairs, stats = build_step_pairs(experts, read_trajectories(store, step), iteration=iteration,
                                                 cut_extra_rounds=pair_cut(recipe), stats=stats,
                                                 skip_context_overflow=recipe.pairs.skip_context_overflow)
            pairs += step_pairs
        folder = store.staging_dir()
        write_records(to_frame(pairs, "pairs"), folder / PAIRS_FILE, "pairs")
        return publish(store, "pairs", key, folder, stats.as_metrics(), {})


def num_pairs(result: StageResult) -> int:
    """Pairs a pairs stage produced (from its metrics)."""
    return int(sum(v for k, v in result.metrics.items() if k in ("pairs_win", "pairs_lose", "pairs_self", "pairs_step")))
