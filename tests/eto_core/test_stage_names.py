"""The typed stage names and the cache's stage versions name the same stages: a stage added to
one and not the other fails here rather than at its first cache key."""

from __future__ import annotations

from typing import get_args

from environments.base import SPLITS
from eto_core.cache import STAGE_VERSIONS
from eto_core.stage_names import EVAL_SPLITS, ROLLOUT_STAGES, TRAINING_ROLLOUTS, Stage


def test_every_stage_and_rollout_shard_has_a_cache_version_and_nothing_else_does() -> None:
    named = set(get_args(Stage)) | {f"{stage}_shard" for stage in ROLLOUT_STAGES}
    assert named == set(STAGE_VERSIONS)


def test_rollout_groups_are_rollout_stages_and_eval_splits_are_splits() -> None:
    assert set(ROLLOUT_STAGES) <= set(get_args(Stage))
    assert set(TRAINING_ROLLOUTS) <= set(ROLLOUT_STAGES) and "evaluate" not in TRAINING_ROLLOUTS
    assert set(EVAL_SPLITS) <= set(SPLITS) and "train" not in EVAL_SPLITS
