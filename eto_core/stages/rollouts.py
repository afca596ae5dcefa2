"""Rollout stages (explore, evaluate, select, best-of-n, RFT's exploration) in checkpointed shards.

A rollout's tasks are cut into shards, each its own artifact published as it finishes: a crash
mid-rollout costs at most the shards in flight. The flow runs pending shards as tasks on its task
runner (``pending_shards`` + ``rollout_shard``), then ``rollout_stage`` combines them.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from eto_core.backends import make_policy
from eto_core.cache import cache_key
from eto_core.config import Recipe
from eto_core.evaluation import summarize, summarize_best_of
from eto_core.pairs import (
    branch_points,
    expert_rounds,
    prefix_of,
)
from eto_core.policy import GenerationSettings
from eto_core.records import EvalSummary
from eto_core.rollout import run_episodes
from eto_core.seeding import seed_everything
from eto_core.stage_names import TRAINING_ROLLOUTS, RolloutStage, Split
from eto_core.stages.artifacts import (
    StageResult,
    claim,
    load_stage_model,
    model_folder,
    publish,
    read_trajectories,
    write_trajectories,
)
from eto_core.stages.keys import need_expert, rollout_key, samples_for
from eto_core.stages.splits import check_splits, env_factory, split_tasks
from eto_core.storage import ArtifactRef, ArtifactStore


@dataclass(frozen=True)
class ShardSpec:
    """One checkpointed slice of a rollout: small and picklable, so it can run in any worker."""

    stage: RolloutStage
    split: Split
    iteration: int
    rollout_key: str
    index: int
    of: int
    tasks: tuple[str, ...]
    gen: GenerationSettings
    prefix_rounds: tuple[int, ...] = ()
    """Step-level continuations: per task, how many of the expert's turns to replay first."""
    expert: ArtifactRef | None = None

    @property
    def key(self) -> str:
        settings: dict[str, Any] = {"rollout": self.rollout_key, "index": self.index, "tasks": list(self.tasks)}
        if self.prefix_rounds:
            settings["prefix_rounds"] = list(self.prefix_rounds)
        return cache_key(f"{self.stage}_shard", settings=settings)


@dataclass
class ShardOutcome:
    """A finished shard: its artifact, and the episodes and seconds it took if it ran now."""

    ref: ArtifactRef
    reused: bool
    episodes: int = 0
    seconds: float = 0.0


def plan_rollout(
    recipe: Recipe, model: ArtifactRef, *, stage: RolloutStage, split: Split, iteration: int, gen: GenerationSettings,
    store: ArtifactStore | None = None, expert: ArtifactRef | None = None,
) -> tuple[str, list[ShardSpec]]:
    """The rollout's cache key and its shards (the split's tasks in slices of ``gen.shard_size``).

    Stage "explore_step" (step-level pairs) has one episode per branch point of each explored
    task's expert trajectory instead, and needs ``store`` and ``expert`` to read them.
    """
    key = rollout_key(recipe, model, stage=stage, split=split, iteration=iteration, gen=gen, expert=expert)
    tasks = split_tasks(recipe, split, stage)
    rounds: list[int] = []
    if stage == "explore_step":
        if store is None:
            raise ValueError("planning step-level continuations reads the expert trajectories: pass the store")
        experts = {t.task_id: t for t in read_trajectories(store, need_expert(expert))}
        branched = [(t, r) for t in tasks if t in experts
                    for r in branch_points(expert_rounds(experts[t]), recipe.pairs.step_points)]
        tasks, rounds = [t for t, _ in branched], [r for _, r in branched]
    if (samples := samples_for(recipe, stage)) > 1:
        # A task's k samples sit side by side; each row of a sampled batch draws its own tokens.
        tasks = [t for t in tasks for _ in range(samples)]
    size = gen.shard_size
    starts = range(0, len(tasks), size)
    # Sampling is seeded per shard, so a resumed (or distributed) rollout samples exactly what
    # an uninterrupted one in a single process would have.
    return key, [
        ShardSpec(stage, split, iteration, key, index, len(starts), tuple(tasks[start : start + size]),
                  gen.model_copy(update={"seed": gen.seed + recipe.seed + index}),
                  prefix_rounds=tuple(rounds[start : start + size]), expert=expert if rounds else None)
        for index, start in enumerate(starts)
    ]


def _loaded_policy_model(recipe: Recipe, store: ArtifactStore, model: ArtifactRef) -> tuple[Any, Any]:
    """The stage model, loaded once per process (and model) however many shards this process runs."""
    with _MODEL_LOCK:
        cached = _MODEL_CACHE.get("entry")
        if cached is not None and cached[0] == model.digest:
            return cached[1]
        hf_model, tokenizer = load_stage_model(recipe, store, model)
        if torch.cuda.is_available():  # loading leaves weights on the CPU; generation belongs on the GPU
            hf_model = hf_model.to("cuda")
        loaded = (hf_model, tokenizer)
        _MODEL_CACHE["entry"] = (model.digest, loaded)
        return loaded


_MODEL_LOCK = threading.Lock()

_MODEL_CACHE: dict[str, tuple[str, tuple[Any, Any]]] = {}


def rollout_shard(
    recipe: Recipe, store: ArtifactStore, model: ArtifactRef, shard: ShardSpec, *, progress: bool = True
) -> ShardOutcome:
    """Reuse the shard's artifact or roll the policy out on its tasks and publish them."""
    shard_stage = f"{shard.stage}_shard"
    with claim(store, shard_stage, shard.key) as hit:
        if hit is not None:
            return ShardOutcome(hit.ref, reused=True)
        policy = make_policy(recipe.policy, shard.gen, model_uri=model.uri,
                             load_hf=lambda: _loaded_policy_model(recipe, store, model),
                             model_path=lambda: model_folder(store, model),
                             trust_remote_code=recipe.model.trust_remote_code)
        source = "explore" if shard.stage in TRAINING_ROLLOUTS else "eval"
        prefixes = None
        if shard.prefix_rounds:
            experts = {t.task_id: t for t in read_trajectories(store, need_expert(shard.expert))}
            prefixes = [prefix_of(experts[t], r) for t, r in zip(shard.tasks, shard.prefix_rounds, strict=True)]
        started = time.perf_counter()
        trajs = run_episodes(
            env_factory(recipe), list(shard.tasks), policy, env_name=recipe.env.name, split=shard.split,
            source=source, iteration=shard.iteration, one_shot=recipe.env.one_shot, seed=recipe.seed,
            batch_size=shard.gen.batch_size, max_env_retries=recipe.env.max_retries,
            step_timeout=recipe.env.step_timeout_s, concurrent_steps=recipe.env.concurrent_steps, progress=progress,
            desc=f"{source} {recipe.env.name}/{shard.split} shard {shard.index + 1}/{shard.of}", prefixes=prefixes,
        )
        seconds = time.perf_counter() - started
        folder = store.staging_dir()
        write_trajectories(folder, trajs)
        # Which process ran the shard: with a distributed runner, where to look for its logs.
        worker = {"host": socket.gethostname(), "pid": os.getpid()}
        ref = publish(store, shard_stage, shard.key, folder, {},
                       {"index": shard.index, "of": shard.of, "seconds": seconds, "worker": worker}).ref
        return ShardOutcome(ref, reused=False, episodes=len(trajs), seconds=seconds)


def pending_shards(
    recipe: Recipe, store: ArtifactStore, model: ArtifactRef, *, stage: RolloutStage, split: Split, iteration: int,
    gen: GenerationSettings, expert: ArtifactRef | None = None,
) -> list[ShardSpec]:
    """The shards a rollout still needs to run: none when the whole rollout is published."""
    key = rollout_key(recipe, model, stage=stage, split=split, iteration=iteration, gen=gen, expert=expert)
    if store.find(store.uri_for(stage, key)) is not None:
        return []
    if stage == "evaluate":
        # The eval key moves with data.seen/unseen_tasks, the expert key does not: re-check here
        # so growing an evaluation split cannot slip past a cached expert stage.
        check_splits(recipe)
    _, shards = plan_rollout(recipe, model, stage=stage, split=split, iteration=iteration, gen=gen, store=store,
                             expert=expert)
    return [s for s in shards if store.find(store.uri_for(f"{stage}_shard", s.key)) is None]


def rollout_stage(
    recipe: Recipe,
    store: ArtifactStore,
    model: ArtifactRef,
    *,
    stage: RolloutStage,
    split: Split,
    iteration: int,
    gen: GenerationSettings,
    progress: bool = True,
    expert: ArtifactRef | None = None,
) -> StageResult:
    """Run the policy on a split: exploration (stage "explore") or evaluation (stage "evaluate").

    The rollout runs as shards, each its own artifact published as it finishes: a crash
    mid-rollout costs at most the shards in flight, and the rerun picks up the finished ones by
    key. Shards not yet published run here, one after another; the flow runs them as tasks on
    its task runner first (``pending_shards`` + ``rollout_shard``), so that here they are all
    reused. Either way the result is the same. Stage "explore_step" rolls out continuations
    from ``expert``'s prefixes (step-level pairs).
    """
    key = rollout_key(recipe, model, stage=stage, split=split, iteration=iteration, gen=gen, expert=expert)
    with claim(store, stage, key) as hit:
        if hit is not None:
            return hit
        if stage == "evaluate":
            check_splits(recipe)  # as in pending_shards
        seed_everything(recipe.seed + iteration)
        _, shards = plan_rollout(recipe, model, stage=stage, split=split, iteration=iteration, gen=gen, store=store,
                                 expert=expert)
        outcomes = [rollout_shard(recipe, store, model, shard, progress=progress) for shard in shards]
        trajs: list[Any] = []
        sizes: list[int] = []
        for outcome in outcomes:
            shard_trajs = read_trajectories(store, outcome.ref)
            trajs += shard_trajs
            sizes.append(len(shard_trajs))
        # Throughput of the shards that ran in this call or, when all were reused (run as tasks
        # just before), of every shard from its manifest: the time each took where it ran.
        timed = [o for o in outcomes if not o.reused] or [
            ShardOutcome(o.ref, o.reused, n, _shard_seconds(store, o)) for o, n in zip(outcomes, sizes, strict=True)]
        ran_episodes, ran_seconds = sum(o.episodes for o in timed), sum(o.seconds for o in timed)
        folder = store.staging_dir()
        write_trajectories(folder, trajs)
        if stage == "best_of_n":  # the best of each task's samples: an oracle's pick, labelled as such
            summary = summarize_best_of(trajs, stage=stage, iteration=iteration, split=split)
        else:
            summary = summarize(trajs, stage=stage, iteration=iteration, split=split)
        metrics = {
            f"{split}_avg_reward": summary.avg_reward,
            f"{split}_success_rate": summary.success_rate,
            f"{split}_mean_steps": summary.mean_steps,
            f"{split}_env_errors": summary.extra["env_errors"],
            # Summed over shards: with shards in parallel this is per-worker throughput.
            f"{split}_episodes_per_s": ran_episodes / ran_seconds if ran_seconds > 0 else 0.0,
            f"{split}_shards_reused": float(sum(o.reused for o in outcomes)),
        }
        return publish(store, stage, key, folder, metrics, {"summary": asdict(summary)})


def _shard_seconds(store: ArtifactStore, outcome: ShardOutcome) -> float:
    """The rollout time a published shard recorded in its manifest."""
    manifest = store.read_manifest(outcome.ref.uri) or {}
    return float(manifest.get("meta", {}).get("info", {}).get("seconds", 0.0))


def rollout_summary(result: StageResult) -> EvalSummary:
    """The evaluation summary a rollout stage recorded, pointing at its trajectories' artifact."""
    return EvalSummary(**{**result.info["summary"], "artifact": result.ref.to_dict()})
