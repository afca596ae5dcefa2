"""Which tasks a stage runs on: the first N of a split, the selection split, and the check that
evaluation tasks are not training tasks."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from environments.base import TextEnv
from environments.registry import make_env
from eto_core.config import Recipe
from eto_core.eto_format import expert_file_task_ids
from eto_core.hygiene import check_split_overlap
from eto_core.stage_names import EVAL_SPLITS, TRAINING_ROLLOUTS, Split, Stage


def env_factory(recipe: Recipe) -> Callable[[], TextEnv]:
    return partial(make_env, recipe.env.name, **recipe.env.kwargs)


def task_count(recipe: Recipe, split: Split, stage: Stage) -> int:
    """How many of a split's tasks a stage uses (always the first ones, so stages line up)."""
    if stage == "select":
        return recipe.selection.tasks
    if split == "train":
        if stage in TRAINING_ROLLOUTS and recipe.data.explore_tasks is not None:
            return recipe.data.explore_tasks
        return recipe.data.train_tasks
    return {"seen": recipe.data.seen_tasks, "unseen": recipe.data.unseen_tasks}[split]


def selection_split(recipe: Recipe) -> Split:
    """The split label of the selection rollouts' records ("dev", or "train" for held-out tasks)."""
    return "train" if recipe.selection.split == "train_holdout" else "dev"


def split_tasks(recipe: Recipe, split: Split, stage: Stage) -> list[str]:
    env = env_factory(recipe)()
    try:
        ids = env.tasks(split)
    finally:
        env.close()
    if stage == "select":
        return _selection_tasks(recipe, ids)
    n = task_count(recipe, split, stage)
    if n > len(ids):
        raise ValueError(
            f"data.{split}_tasks = {n} but environment '{recipe.env.name}' has only {len(ids)} {split} tasks; "
            f"lower data.{split}_tasks."
        )
    return ids[:n]


def _selection_tasks(recipe: Recipe, ids: list[str]) -> list[str]:
    sel = recipe.selection
    start = recipe.data.train_tasks if sel.split == "train_holdout" else 0
    if start + sel.tasks > len(ids):
        where = (f"training tasks after data.train_tasks = {start}" if start else "dev tasks")
        raise ValueError(
            f"selection.tasks = {sel.tasks} but environment '{recipe.env.name}' has only {max(len(ids) - start, 0)} "
            f"{where}; lower selection.tasks or data.train_tasks."
        )
    return ids[start : start + sel.tasks]


def check_splits(recipe: Recipe) -> dict[str, list[str]]:
    """Refuse (or warn, per data.on_split_overlap) when evaluation tasks are training tasks."""
    env = env_factory(recipe)()
    try:
        train = env.tasks("train")[: recipe.data.train_tasks]
        evals: dict[str, list[str]] = {s: env.tasks(s)[: task_count(recipe, s, "evaluate")] for s in EVAL_SPLITS}
    finally:
        env.close()
    if recipe.data.expert_file:  # SFT trains on the file's tasks as well as exploring the env's
        train = train + expert_file_task_ids(recipe.data.expert_file, env_factory(recipe),
                                             id_file=recipe.data.expert_id_file)
    return check_split_overlap(
        train, evals, mode=recipe.data.on_split_overlap, source=f"environment '{recipe.env.name}'"
    )
