"""The names of the pipeline's stages and splits, as typed literals used across the layers.

A stage name is also the artifact store's folder and the first field of its cache key
(eto_core.cache.STAGE_VERSIONS); a rollout stage's shards live under ``<stage>_shard``.
"""

from __future__ import annotations

from typing import Literal, get_args

from environments.base import SPLITS, Split

RolloutStage = Literal["explore", "explore_step", "rft_explore", "evaluate", "select", "best_of_n"]
"""Stages that roll a policy out in an environment."""

Stage = Literal["expert", "model_init", "sft", "rft", "pairs", "dpo",
                "explore", "explore_step", "rft_explore", "evaluate", "select", "best_of_n"]

ROLLOUT_STAGES: tuple[RolloutStage, ...] = get_args(RolloutStage)
TRAINING_ROLLOUTS: tuple[RolloutStage, ...] = ("explore", "explore_step", "rft_explore")
"""Rollouts on the training split (their records are marked as exploration, not evaluation)."""

EVAL_SPLITS: tuple[Split, ...] = ("seen", "unseen")
"""The splits every policy is evaluated on (the paper's seen/unseen held-out tasks)."""

__all__ = ["EVAL_SPLITS", "ROLLOUT_STAGES", "SPLITS", "TRAINING_ROLLOUTS", "RolloutStage", "Split", "Stage"]
