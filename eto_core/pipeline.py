"""The ETO stages as plain functions: key -> reuse a finished artifact or compute and publish it.

Each stage reads its inputs as artifact refs (uri + content digest), computes its explicit
cache key (eto_core.cache) and, if an artifact under that key is already complete, returns it
without recomputing: a crashed or repeated run resumes from every finished stage even when
the orchestrator's own result cache is gone. A stage computes while holding the store's claim on
its key, so runs side by side on one machine compute a shared stage once. Prefect tasks (tasks/) wrap these functions and
use the same keys for Prefect's cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import BaseModel

from environments.base import TextEnv
from environments.registry import make_env
from eto_core.backends import make_policy
from eto_core.cache import cache_key
from eto_core.config import Recipe
from eto_core.dpo import train_dpo
from eto_core.eto_format import IMPORT_VERSION, expert_file_task_ids, load_expert_file
from eto_core.evaluation import summarize, summarize_best_of
from eto_core.hygiene import check_split_overlap
from eto_core.model_source import convert_gguf, is_gguf, resolve_model_path
from eto_core.modeling import build_tiny_model, load_model, save_model, train_tokenizer
from eto_core.pairs import (
    branch_points,
    build_pairs,
    build_step_pairs,
    expert_rounds,
    no_pairs_message,
    prefix_of,
    strip_example,
)
from eto_core.policy import GenerationSettings
from eto_core.pretrain import pretrain_lm
from eto_core.records import (
    frame_to_pairs,
    frame_to_trajectories,
    read_records,
    to_frame,
    write_records,
)
from eto_core.rollout import collect_expert, run_episodes
from eto_core.sft import TrainResult, train_sft
from eto_core.storage import ArtifactRef, ArtifactStore, sha256_file

TRAJ_FILE = "trajectories.parquet"
PAIRS_FILE = "pairs.parquet"
MODEL_DIR = "model"
POINTER_FILE = "base_model.json"


@dataclass
class StageResult:
    """What a stage hands on: its artifact, its metrics, and whether it was reused."""

    stage: str
    ref: ArtifactRef
    metrics: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def make_store(recipe: Recipe, state_dir: str | Path = ".eto") -> ArtifactStore:
    return ArtifactStore(
        recipe.storage.root,
        cache_dir=Path(state_dir) / "cache",
        s3_endpoint_url=recipe.storage.s3_endpoint_url,
        s3_region=recipe.storage.s3_region,
    )


def env_factory(recipe: Recipe) -> Callable[[], TextEnv]:
    return partial(make_env, recipe.env.name, **recipe.env.kwargs)


_S = TypeVar("_S", bound=BaseModel)


def seeded(settings: _S, recipe: Recipe) -> _S:
    """Component settings with the recipe's global seed added to their own seed, so one
    ``seed`` in a recipe (or ``eto run --seed``) varies model init, data order and sampling."""
    return settings.model_copy(update={"seed": settings.seed + recipe.seed})  # type: ignore[attr-defined]  # every seeded settings model has `seed`


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def task_count(recipe: Recipe, split: str, stage: str) -> int:
    """How many of a split's tasks a stage uses (always the first ones, so stages line up)."""
    if stage == "select":
        return recipe.selection.tasks
    if split == "train":
        if stage in ("explore", "explore_step", "rft_explore") and recipe.data.explore_tasks is not None:
            return recipe.data.explore_tasks
        return recipe.data.train_tasks
    return {"seen": recipe.data.seen_tasks, "unseen": recipe.data.unseen_tasks}[split]


def selection_split(recipe: Recipe) -> str:
    """The split label of the selection rollouts' records ("dev", or "train" for held-out tasks)."""
    return "train" if recipe.selection.split == "train_holdout" else "dev"


def _split_tasks(recipe: Recipe, split: str, stage: str) -> list[str]:
    env = env_factory(recipe)()
    try:
        ids = env.tasks(split)  # type: ignore[arg-type]
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
        evals = {s: env.tasks(s)[: task_count(recipe, s, "evaluate")] for s in ("seen", "unseen")}  # type: ignore[arg-type]
    finally:
        env.close()
    if recipe.data.expert_file:  # SFT trains on the file's tasks as well as exploring the env's
        train = train + expert_file_task_ids(recipe.data.expert_file, env_factory(recipe),
                                             id_file=recipe.data.expert_id_file)
    return check_split_overlap(
        train, evals, mode=recipe.data.on_split_overlap, source=f"environment '{recipe.env.name}'"
    )


def _reuse(store: ArtifactStore, stage: str, key: str) -> StageResult | None:
    uri = store.uri_for(stage, key)
    manifest = store.read_manifest(uri)
    if manifest is None:
        return None
    meta = manifest.get("meta", {})
    return StageResult(stage, ArtifactRef(uri, manifest["digest"]), dict(meta.get("metrics", {})), True, meta.get("info", {}))


@contextmanager
def _claim(store: ArtifactStore, stage: str, key: str) -> Iterator[StageResult | None]:
    """Hold the store's claim on ``stage``/``key`` and yield its artifact if one is published.

    A stage computes and publishes inside the claim, so a second run reaching the same key at
    the same time waits and reuses the first one's artifact instead of computing it again."""
    with store.claim(store.uri_for(stage, key)):
        yield _reuse(store, stage, key)


def _publish(store: ArtifactStore, stage: str, key: str, folder: Path, metrics: dict[str, float], info: dict[str, Any]) -> StageResult:
    ref = store.publish(folder, store.uri_for(stage, key), meta={"metrics": metrics, "info": info})
    return StageResult(stage, ref, metrics, False, info)


def _write_trajs(folder: Path, trajs: list[Any], name: str = TRAJ_FILE) -> None:
    write_records(to_frame(trajs, "trajectories"), folder / name, "trajectories")


def read_trajectories(store: ArtifactStore, ref: ArtifactRef, name: str = TRAJ_FILE) -> list[Any]:
    return frame_to_trajectories(read_records(store.fetch(ref) / name, "trajectories"))


# -- model loading -------------------------------------------------------------------------------
def model_folder(store: ArtifactStore, ref: ArtifactRef) -> str:
    """A loadable model path: the artifact's model folder, or the base model it points at."""
    folder = store.fetch(ref)
    pointer = folder / POINTER_FILE
    if pointer.is_file():
        return str(json.loads(pointer.read_text())["path"])
    return str(folder / MODEL_DIR)


def endpoint_ref(recipe: Recipe) -> ArtifactRef:
    """A stand-in model ref for an OpenAI-compatible endpoint (policy.backend: openai): its
    "digest" names the endpoint and model, so rollout keys differ per endpoint and model."""
    policy = recipe.policy
    name = f"{policy.base_url}#{policy.model}"
    return ArtifactRef(f"openai:{name}", hashlib.sha256(name.encode()).hexdigest())


def load_stage_model(recipe: Recipe, store: ArtifactStore, ref: ArtifactRef) -> tuple[Any, Any]:
    return load_model(
        model_folder(store, ref),
        trust_remote_code=recipe.model.trust_remote_code,
        chat_template=recipe.model.chat_template,
    )


# -- cache keys: what each stage's result depends on -----------------------------------------------
def env_version(recipe: Recipe) -> str:
    """The environment's behaviour version (part of the rollout and expert cache keys)."""
    return _env_version(recipe.env.name, json.dumps(recipe.env.kwargs, sort_keys=True, default=str))


@functools.cache
def _env_version(name: str, kwargs_json: str) -> str:
    # Keys are computed for every stage and every Prefect cache lookup: build the environment
    # (a JVM for some benchmarks) once per process, not once per key.
    env = make_env(name, **json.loads(kwargs_json))
    try:
        return env.version
    finally:
        env.close()


def training_one_shot(recipe: Recipe) -> bool:
    """Whether the prompts SFT and DPO train on carry the one-shot example (ETO's: never)."""
    return recipe.env.one_shot and recipe.data.one_shot_in_training


def strips_example(recipe: Recipe) -> bool:
    """Explored with the one-shot example, trained without it: explored records lose it before
    they are paired or trained on."""
    return recipe.env.one_shot and not recipe.data.one_shot_in_training


def expert_key(recipe: Recipe) -> str:
    settings: dict[str, Any] = {"env": recipe.env, "env_version": env_version(recipe),
                                "train_tasks": recipe.data.train_tasks}
    if recipe.data.expert_file:
        settings["expert_file_sha256"] = sha256_file(Path(recipe.data.expert_file))
        # The import rules (ids mapped, prompts re-rendered in ours) and the id table they read.
        settings["eto_import"] = IMPORT_VERSION
        if recipe.data.expert_id_file:
            settings["expert_id_file_sha256"] = sha256_file(Path(recipe.data.expert_id_file))
    if strips_example(recipe):  # only when set: keys of recipes without the setting stay as they were
        settings["one_shot_in_training"] = False
    return cache_key("expert", settings=settings)


def _local_weights_digest(path: str) -> str | None:
    """sha256 over a local model folder's files (None for a hub id): a pointer to a folder
    whose files changed must not hit the old pointer's cached results."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(folder)).encode())
        h.update(sha256_file(file).encode())
    return h.hexdigest()


@functools.cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    # Keys are computed more than once per run; a GGUF is ~100 MB: hash each version once.
    return sha256_file(Path(path))


def model_init_key(recipe: Recipe, expert: ArtifactRef | None) -> str:
    if recipe.model.path is not None and is_gguf(source := resolve_model_path(recipe.model.path)):
        # By content, not by path: the same GGUF reached through a package or a file is one model.
        stat = Path(source).stat()
        return cache_key("model_init", settings={"gguf_sha256": _file_digest(source, stat.st_size, stat.st_mtime_ns),
                                                 "chat_template": recipe.model.chat_template})
    if recipe.model.path is not None:
        return cache_key("model_init", settings={"path": recipe.model.path, "chat_template": recipe.model.chat_template,
                                                 "content": _local_weights_digest(recipe.model.path)})
    if expert is None:
        raise ValueError("the tiny model is built from the expert corpus: model_init needs the expert artifact")
    settings = {"tiny": seeded(recipe.model.tiny, recipe), "corpus_tasks": recipe.model.tokenizer_corpus_tasks,
                "pretrain": seeded(recipe.model.pretrain, recipe)}
    return cache_key("model_init", settings=settings, inputs={"expert": expert})


def sft_key(recipe: Recipe, base: ArtifactRef, expert: ArtifactRef) -> str:
    return cache_key("sft", settings={"sft": recipe.sft.key_fields(), "seed": recipe.seed},
                     inputs={"base": base, "expert": expert})


ROLLOUT_STAGES = ("explore", "evaluate", "select", "best_of_n", "rft_explore")
"""Stages that roll a policy out; "explore" and "rft_explore" run on training tasks."""


def samples_for(recipe: Recipe, stage: str) -> int:
    """Trajectories per task a rollout stage samples (1: one per task)."""
    return {"explore": recipe.pairs.samples_per_task, "best_of_n": recipe.baselines.best_of_n,
            "rft_explore": recipe.baselines.rft_samples}.get(stage, 1)


def sampling(recipe: Recipe, stage: str) -> GenerationSettings:
    """The generation settings of a rollout stage: the recipe's explore/evaluate settings, at the
    baselines' temperature for the sampling baselines."""
    if stage in ("best_of_n", "rft_explore"):
        gen = recipe.evaluate if stage == "best_of_n" else recipe.explore
        return gen.model_copy(update={"temperature": recipe.baselines.temperature})
    return recipe.explore if stage == "explore" else recipe.evaluate


def rft_key(recipe: Recipe, base: ArtifactRef, expert: ArtifactRef | None, explored: ArtifactRef) -> str:
    return cache_key("rft", settings={"sft": recipe.sft.key_fields(), "seed": recipe.seed,
                                      **({"one_shot_in_training": False} if strips_example(recipe) else {})},
                     inputs={"base": base, "expert": expert, "explored": explored})


def rollout_key(
    recipe: Recipe, model: ArtifactRef, *, stage: str, split: str, iteration: int, gen: GenerationSettings,
    expert: ArtifactRef | None = None,
) -> str:
    settings = {"env": recipe.env, "env_version": env_version(recipe), "split": split,
                "n": task_count(recipe, split, stage), "gen": gen, "iteration": iteration, "seed": recipe.seed,
                "policy": recipe.policy.key_fields()}
    if (samples := samples_for(recipe, stage)) > 1:
        settings["samples_per_task"] = samples
    if stage == "select":
        settings["selection"] = {"split": recipe.selection.split, "train_tasks": recipe.data.train_tasks}
    inputs: dict[str, ArtifactRef | None] = {"model": model}
    if stage == "explore_step":  # continuations from the expert's prefixes: the expert is an input
        settings["step_points"] = recipe.pairs.step_points
        inputs["expert"] = need_expert(expert)
    return cache_key(stage, settings=settings, inputs=inputs)


def need_expert(expert: ArtifactRef | None) -> ArtifactRef:
    if expert is None:
        raise ValueError("step-level pairs (pairs.level 'step' or 'both') replay expert prefixes, and this run has "
                         "no expert trajectories; use pairs.level: trajectory")
    return expert


def pairs_key(
    recipe: Recipe, expert: ArtifactRef | None, explored: ArtifactRef | None, iteration: int,
    step: ArtifactRef | None = None,
) -> str:
    inputs = {"expert": expert, "explored": explored, **({"step": step} if step is not None else {})}
    # step_rule 2: a step pair's cut follows the expert's continuation, not the chosen side. A
    # setting rather than a stage-version bump, so trajectory-only pairs keep their cache; the
    # options after it likewise enter the key only when set away from their default.
    return cache_key(
        "pairs", settings={"iteration": iteration, "cut_extra_rounds": pair_cut(recipe),
                           **({"self_pairs": True} if recipe.pairs.self_pairs or expert is None else {}),
                           **({"step_rule": 2} if step is not None else {}),
                           **({"skip_context_overflow": True} if recipe.pairs.skip_context_overflow else {}),
                           **({"one_shot_in_training": False} if strips_example(recipe) else {})},
        inputs=inputs,
    )


def pair_cut(recipe: Recipe) -> int | None:
    """Rounds the rejected side may run past the expert's (None: never cut)."""
    return recipe.pair_cut_extra_rounds if recipe.pairs.cut_rejected else None


def dpo_key(recipe: Recipe, model: ArtifactRef, pairs: ArtifactRef, iteration: int) -> str:
    # Where the reference log-probs are computed, and whether the shared prefix runs once per
    # batch, change the time, not the result: not key fields.
    settings = {"dpo": recipe.dpo_for_iteration(iteration).key_fields(), "iteration": iteration, "seed": recipe.seed}
    return cache_key("dpo", settings=settings, inputs={"model": model, "pairs": pairs})


# -- stages --------------------------------------------------------------------------------------
def expert_stage(recipe: Recipe, store: ArtifactStore, *, progress: bool = True) -> StageResult:
    """Expert trajectories on the training tasks (from the env's expert or an ETO file)."""
    check_splits(recipe)  # before any training, and on every run: the check is cheap
    key = expert_key(recipe)
    with _claim(store, "expert", key) as hit:
        if hit is not None:
            return hit
        if recipe.data.expert_file:
            trajs = load_expert_file(recipe.data.expert_file, env_factory(recipe), one_shot=training_one_shot(recipe),
                                     id_file=recipe.data.expert_id_file, limit=recipe.data.train_tasks)
            skipped: list[str] = []
        else:
            trajs, skipped = collect_expert(
                env_factory(recipe), _split_tasks(recipe, "train", "expert"), env_name=recipe.env.name, split="train",
                one_shot=training_one_shot(recipe), progress=progress, max_env_retries=recipe.env.max_retries,
            )
        if not trajs:
            raise ValueError(f"no expert trajectory succeeded on environment '{recipe.env.name}'; check its expert.")
        folder = store.staging_dir()
        _write_trajs(folder, trajs)
        metrics = {
            "expert_trajectories": float(len(trajs)),
            "expert_skipped": float(len(skipped)),
            "expert_avg_reward": sum(t.reward for t in trajs) / len(trajs),
            "expert_mean_steps": sum(t.num_steps for t in trajs) / len(trajs),
        }
        return _publish(store, "expert", key, folder, metrics, {"skipped": skipped[:50]})


def corpus_tokenizer(recipe: Recipe, experts: list[Any]) -> Any:
    """The tiny model's tokenizer: trained on the first ``model.tokenizer_corpus_tasks`` expert
    trajectories' messages (the model_init stage's, and the benchmarks' that mimic it)."""
    corpus = [m["content"] for t in experts[: recipe.model.tokenizer_corpus_tasks] for m in t.messages]
    return train_tokenizer(corpus, recipe.model.tiny.vocab_size)


def model_init_stage(recipe: Recipe, store: ArtifactStore, expert: ArtifactRef | None) -> StageResult:
    """The starting model: the tiny default built from the expert corpus, a GGUF converted once
    into a model folder, or a base model path (a pointer artifact). Only the tiny model needs
    ``expert``."""
    key = model_init_key(recipe, expert)
    if recipe.model.path is not None and is_gguf(source := resolve_model_path(recipe.model.path)):
        with _claim(store, "model_init", key) as hit:
            if hit is not None:
                return hit
            folder = store.staging_dir()
            metrics = convert_gguf(source, folder / MODEL_DIR)
            # As for any base model: a template or tokenizer that cannot be used fails before training.
            load_model(folder / MODEL_DIR, chat_template=recipe.model.chat_template)
            return _publish(store, "model_init", key, folder, metrics, {"base": recipe.model.path, "gguf": source})
    if recipe.model.path is not None:
        with _claim(store, "model_init", key) as hit:
            if hit is not None:
                return hit
            # Validate now (tokenizer, chat template, weights) so a bad path fails before any training.
            load_model(recipe.model.path, trust_remote_code=recipe.model.trust_remote_code,
                       chat_template=recipe.model.chat_template)
            folder = store.staging_dir()
            (folder / POINTER_FILE).write_text(json.dumps({"path": recipe.model.path}))
            return _publish(store, "model_init", key, folder, {}, {"base": recipe.model.path})

    with _claim(store, "model_init", key) as hit:
        if hit is not None:
            return hit
        assert expert is not None  # model_init_key refused it otherwise
        trajs = read_trajectories(store, expert)
        tokenizer = corpus_tokenizer(recipe, trajs)
        model = build_tiny_model(seeded(recipe.model.tiny, recipe), tokenizer)
        folder = store.staging_dir()
        metrics = {"model_parameters": float(sum(p.numel() for p in model.parameters())),
                   "vocab_size": float(len(tokenizer))}
        info: dict[str, Any] = {}
        if recipe.model.pretrain.max_steps > 0:
            pretrain = seeded(recipe.model.pretrain, recipe)
            seed_everything(pretrain.seed)
            pre = pretrain_lm(model, tokenizer, trajs, pretrain, str(folder / "trainer"))
            _drop_trainer_dir(folder)
            metrics.update({"pretrain_first_loss": pre.first_loss, "pretrain_last_loss": pre.last_loss,
                            "pretrain_steps": float(pre.num_steps), "pretrain_runtime_s": pre.runtime_s,
                            "pretrain_peak_memory_mb": pre.peak_memory_mb})
            info["log_history"] = pre.log_history
        save_model(model, tokenizer, folder / MODEL_DIR)
        return _publish(store, "model_init", key, folder, metrics, info)


def sft_stage(recipe: Recipe, store: ArtifactStore, base: ArtifactRef, expert: ArtifactRef) -> StageResult:
    key = sft_key(recipe, base, expert)
    with _claim(store, "sft", key) as hit:
        if hit is not None:
            return hit
        seed_everything(recipe.seed)
        model, tokenizer = load_stage_model(recipe, store, base)
        trajs = read_trajectories(store, expert)
        folder = store.staging_dir()
        result = train_sft(model, tokenizer, trajs, seeded(recipe.sft, recipe), str(folder / "trainer"))
        metrics = _save_trained(folder, result, tokenizer, "sft")
        return _publish(store, "sft", key, folder, metrics, {"log_history": result.log_history})


def rft_stage(
    recipe: Recipe, store: ArtifactStore, base: ArtifactRef, expert: ArtifactRef | None, explored: ArtifactRef
) -> StageResult:
    """Rejection-sampling fine-tuning: SFT from the base model on the expert trajectories (if any)
    plus the agent's own successful explored trajectories (each distinct one once)."""
    key = rft_key(recipe, base, expert, explored)
    with _claim(store, "rft", key) as hit:
        if hit is not None:
            return hit
        sampled = read_trajectories(store, explored)
        if strips_example(recipe):
            sampled = [strip_example(t) for t in sampled]
        own, seen = [], set()
        bar = recipe.baselines.rft_min_reward
        for t in sampled:
            fingerprint = json.dumps(t.messages, sort_keys=True)
            kept = t.success or (bar is not None and t.reward >= bar)
            if kept and t.terminate_reason != "env_error" and fingerprint not in seen:
                seen.add(fingerprint)
                own.append(t)
        if not own:
            raise ValueError(
                f"RFT: none of the {len(sampled)} explored trajectories succeeded, so there is nothing to add to the "
                "SFT data; sample more (baselines.rft_samples, baselines.temperature) or start from a stronger model."
            )
        experts = read_trajectories(store, expert) if expert is not None else []
        seed_everything(recipe.seed)
        model, tokenizer = load_stage_model(recipe, store, base)
        folder = store.staging_dir()
        result = train_sft(model, tokenizer, experts + own, seeded(recipe.sft, recipe), str(folder / "trainer"))
        metrics = {**_save_trained(folder, result, tokenizer, "rft"), "rft_own_successes": float(len(own)),
                   "rft_expert_trajectories": float(len(experts)), "rft_sampled": float(len(sampled))}
        return _publish(store, "rft", key, folder, metrics, {"log_history": result.log_history})


@dataclass(frozen=True)
class ShardSpec:
    """One checkpointed slice of a rollout: small and picklable, so it can run in any worker."""

    stage: str
    split: str
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
    recipe: Recipe, model: ArtifactRef, *, stage: str, split: str, iteration: int, gen: GenerationSettings,
    store: ArtifactStore | None = None, expert: ArtifactRef | None = None,
) -> tuple[str, list[ShardSpec]]:
    """The rollout's cache key and its shards (the split's tasks in slices of ``gen.shard_size``).

    Stage "explore_step" (step-level pairs) has one episode per branch point of each explored
    task's expert trajectory instead, and needs ``store`` and ``expert`` to read them.
    """
    key = rollout_key(recipe, model, stage=stage, split=split, iteration=iteration, gen=gen, expert=expert)
    tasks = _split_tasks(recipe, split, stage)
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
    with _claim(store, shard_stage, shard.key) as hit:
        if hit is not None:
            return ShardOutcome(hit.ref, reused=True)
        policy = make_policy(recipe.policy, shard.gen, model_uri=model.uri,
                             load_hf=lambda: _loaded_policy_model(recipe, store, model),
                             model_path=lambda: model_folder(store, model),
                             trust_remote_code=recipe.model.trust_remote_code)
        source = "explore" if shard.stage in ("explore", "explore_step", "rft_explore") else "eval"
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
        _write_trajs(folder, trajs)
        # Which process ran the shard: with a distributed runner, where to look for its logs.
        worker = {"host": socket.gethostname(), "pid": os.getpid()}
        ref = _publish(store, shard_stage, shard.key, folder, {},
                       {"index": shard.index, "of": shard.of, "seconds": seconds, "worker": worker}).ref
        return ShardOutcome(ref, reused=False, episodes=len(trajs), seconds=seconds)


def pending_shards(
    recipe: Recipe, store: ArtifactStore, model: ArtifactRef, *, stage: str, split: str, iteration: int,
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
    stage: str,
    split: str,
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
    with _claim(store, stage, key) as hit:
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
        _write_trajs(folder, trajs)
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
        return _publish(store, stage, key, folder, metrics, {"summary": asdict(summary)})


def _shard_seconds(store: ArtifactStore, outcome: ShardOutcome) -> float:
    """The rollout time a published shard recorded in its manifest."""
    manifest = store.read_manifest(outcome.ref.uri) or {}
    return float(manifest.get("meta", {}).get("info", {}).get("seconds", 0.0))


def pairs_stage(
    recipe: Recipe, store: ArtifactStore, expert: ArtifactRef | None, explored: ArtifactRef | None, iteration: int,
    step: ArtifactRef | None = None,
) -> StageResult:
    """Failure/success pairs; without expert trajectories (``expert`` None), only pairs among the
    agent's own samples exist. ``explored``: whole explored trajectories (trajectory-level
    pairs); ``step``: continuations from expert prefixes (step-level pairs); either may be absent."""
    key = pairs_key(recipe, expert, explored, iteration, step)
    with _claim(store, "pairs", key) as hit:
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
        return _publish(store, "pairs", key, folder, stats.as_metrics(), {})


def num_pairs(result: StageResult) -> int:
    """Pairs a pairs stage produced (from its metrics)."""
    return int(sum(v for k, v in result.metrics.items() if k in ("pairs_win", "pairs_lose", "pairs_self", "pairs_step")))


def read_pairs(store: ArtifactStore, ref: ArtifactRef) -> list[Any]:
    return frame_to_pairs(read_records(store.fetch(ref) / PAIRS_FILE, "pairs"))


def dpo_stage(recipe: Recipe, store: ArtifactStore, model: ArtifactRef, pairs: ArtifactRef, iteration: int) -> StageResult:
    settings = seeded(recipe.dpo_for_iteration(iteration), recipe)
    key = dpo_key(recipe, model, pairs, iteration)
    with _claim(store, "dpo", key) as hit:
        if hit is not None:
            return hit
        pair_records = read_pairs(store, pairs)
        if not pair_records:
            manifest = store.read_manifest(pairs.uri) or {}
            raise ValueError(no_pairs_message(manifest.get("meta", {}).get("metrics", {}), iteration,
                                              expert_file=recipe.data.expert_file))
        seed_everything(recipe.seed + iteration)
        hf_model, tokenizer = load_stage_model(recipe, store, model)
        folder = store.staging_dir()
        result = train_dpo(hf_model, tokenizer, pair_records, settings, str(folder / "trainer"))
        metrics = {
            **_save_trained(folder, result, tokenizer, "dpo"),
            "dpo_ref_logps_s": result.ref_logps_seconds,
            **{f"dpo_{k.replace('/', '_')}": float(v) for k, v in result.metrics.items()},
        }
        return _publish(store, "dpo", key, folder, metrics, {"log_history": result.log_history})


def _save_trained(folder: Path, result: TrainResult, tokenizer: Any, prefix: str) -> dict[str, float]:
    """Save the trained model and its loss curve into the stage folder; the stage's metrics."""
    save_model(result.model, tokenizer, folder / MODEL_DIR)
    _drop_trainer_dir(folder)
    # The loss curve goes to the manifest's meta and MLflow, not into a file: it holds wall
    # times, which would make the artifact's content digest (and every key after it) differ
    # between two runs that trained the very same weights.
    return {
        f"{prefix}_first_loss": result.first_loss,
        f"{prefix}_last_loss": result.last_loss,
        f"{prefix}_steps": float(result.num_steps),
        f"{prefix}_runtime_s": result.runtime_s,
        f"{prefix}_truncated": float(result.num_truncated),
        f"{prefix}_peak_memory_mb": result.peak_memory_mb,
    }


def _drop_trainer_dir(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder / "trainer", ignore_errors=True)
