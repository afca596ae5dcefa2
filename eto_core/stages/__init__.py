"""The ETO stages as plain functions: key -> reuse a finished artifact or compute and publish it.

Each stage reads its inputs as artifact refs (uri + content digest), computes its explicit
cache key and, if an artifact under that key is already complete, returns it without
recomputing: a crashed or repeated run resumes from every finished stage even when the
orchestrator's own result cache is gone. Prefect tasks (tasks/stage_tasks.py) wrap these
functions and use the same keys for Prefect's cache.

Where things are:

- ``keys``: every stage's cache key (``<stage>_key``) and the recipe-derived settings in them;
- ``artifacts``: ``StageResult``, the store, claim/reuse/publish, record files and model folders;
- ``splits``: which tasks of which split a stage runs on, and the train/eval overlap check;
- ``data``: the expert trajectories and the failure/success pairs;
- ``models``: model_init, SFT, RFT and DPO (the stages whose artifact is a model);
- ``rollouts``: exploration, evaluation, selection and best-of-n, in checkpointed shards.

This package re-exports each module's public names, so callers write ``stages.sft_stage``.
"""

from __future__ import annotations

from eto_core.stages.artifacts import (
    MODEL_DIR,
    PAIRS_FILE,
    POINTER_FILE,
    TRAJ_FILE,
    StageResult,
    claim,
    endpoint_ref,
    load_stage_model,
    make_store,
    model_folder,
    publish,
    read_pairs,
    read_trajectories,
    write_trajectories,
)
from eto_core.stages.data import expert_stage, num_pairs, pairs_stage
from eto_core.stages.keys import (
    dpo_key,
    env_version,
    expert_key,
    model_init_key,
    need_expert,
    pair_cut,
    pairs_key,
    rft_key,
    rollout_key,
    samples_for,
    sampling,
    sft_key,
    strips_example,
    training_one_shot,
)
from eto_core.stages.models import corpus_tokenizer, dpo_stage, model_init_stage, rft_stage, sft_stage
from eto_core.stages.rollouts import (
    ShardOutcome,
    ShardSpec,
    pending_shards,
    plan_rollout,
    rollout_shard,
    rollout_stage,
    rollout_summary,
)
from eto_core.stages.splits import check_splits, env_factory, selection_split, split_tasks, task_count

__all__ = [
    "MODEL_DIR", "PAIRS_FILE", "POINTER_FILE", "TRAJ_FILE", "ShardOutcome", "ShardSpec", "StageResult", "check_splits",
    "claim", "corpus_tokenizer", "dpo_key", "dpo_stage", "endpoint_ref", "env_factory", "env_version", "expert_key",
    "expert_stage", "load_stage_model", "make_store", "model_folder", "model_init_key", "model_init_stage",
    "need_expert", "num_pairs", "pair_cut", "pairs_key", "pairs_stage", "pending_shards", "plan_rollout", "publish",
    "read_pairs", "read_trajectories", "rft_key", "rft_stage", "rollout_key", "rollout_shard", "rollout_stage", "rollout_summary",
    "samples_for", "sampling", "selection_split", "sft_key", "sft_stage", "split_tasks", "strips_example",
    "task_count", "training_one_shot", "write_trajectories",
]
