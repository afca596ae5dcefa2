"""Cache keys: what each stage's result depends on (settings + input artifacts' digests + versions).

One function per stage, named ``<stage>_key``; the Prefect tasks use the same functions for
Prefect's cache, so both caches agree on what "the same stage" means. The recipe-derived helpers
here (sampling settings, pair cut, one-shot handling) are the ones that enter keys.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from environments.registry import make_env
from eto_core.cache import cache_key
from eto_core.config import Recipe
from eto_core.eto_format import IMPORT_VERSION
from eto_core.model_source import is_gguf, resolve_model_path
from eto_core.policy import GenerationSettings
from eto_core.seeding import seeded
from eto_core.stage_names import RolloutStage, Split
from eto_core.stages.splits import task_count
from eto_core.storage import ArtifactRef, sha256_file


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


def samples_for(recipe: Recipe, stage: RolloutStage) -> int:
    """Trajectories per task a rollout stage samples (1: one per task)."""
    return {"explore": recipe.pairs.samples_per_task, "best_of_n": recipe.baselines.best_of_n,
            "rft_explore": recipe.baselines.rft_samples}.get(stage, 1)


def sampling(recipe: Recipe, stage: RolloutStage) -> GenerationSettings:
    """The generation settings of a rollout stage: the recipe's explore/evaluate settings, at the
    baselines' temperature for the sampling baselines."""
    if stage in ("best_of_n", "rft_explore"):
        gen = recipe.evaluate if stage == "best_of_n" else recipe.explore
        return gen.model_copy(update={"temperature": recipe.baselines.temperature})
    return recipe.explore if stage == "explore" else recipe.evaluate


def pair_cut(recipe: Recipe) -> int | None:
    """Rounds the rejected side may run past the expert's (None: never cut)."""
    return recipe.pair_cut_extra_rounds if recipe.pairs.cut_rejected else None


def need_expert(expert: ArtifactRef | None) -> ArtifactRef:
    if expert is None:
        raise ValueError("step-level pairs (pairs.level 'step' or 'both') replay expert prefixes, and this run has "
                         "no expert trajectories; use pairs.level: trajectory")
    return expert


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


def rft_key(recipe: Recipe, base: ArtifactRef, expert: ArtifactRef | None, explored: ArtifactRef) -> str:
    return cache_key("rft", settings={"sft": recipe.sft.key_fields(), "seed": recipe.seed,
                                      **({"one_shot_in_training": False} if strips_example(recipe) else {})},
                     inputs={"base": base, "expert": expert, "explored": explored})


def rollout_key(
    recipe: Recipe, model: ArtifactRef, *, stage: RolloutStage, split: Split, iteration: int, gen: GenerationSettings,
    expert: ArtifactRef | None = None,
) -> str:
    settings = {"env": recipe.env, "env_version": env_version(recipe), "split": split,
                "n": task_count(recipe, split, stage), "gen": gen, "iteration": iteration, "seed": recipe.seed,
                "policy": recipe.policy.key_fields()}
    if (samples := samples_for(recipe, stage)) > 1:
        settings["samples_per_task"] = samples
    if gen.temperature > 0 and recipe.policy.backend == "hf":
        # Per-row seeded streams (eto_core.sampling) replaced HF's sampler, so the same seed
        # draws other tokens: sampler 2 drew by Gumbel-max, 3 by the two-level inverse CDF.
        # Greedy rollouts and the other backends' are unchanged and keep their cache.
        settings["sampler"] = 3
    if stage == "select":
        settings["selection"] = {"split": recipe.selection.split, "train_tasks": recipe.data.train_tasks}
    inputs: dict[str, ArtifactRef | None] = {"model": model}
    if stage == "explore_step":  # continuations from the expert's prefixes: the expert is an input
        settings["step_points"] = recipe.pairs.step_points
        inputs["expert"] = need_expert(expert)
    return cache_key(stage, settings=settings, inputs=inputs)


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


def dpo_key(recipe: Recipe, model: ArtifactRef, pairs: ArtifactRef, iteration: int) -> str:
    # Where the reference log-probs are computed, and whether the shared prefix runs once per
    # batch, change the time, not the result: not key fields.
    settings = {"dpo": recipe.dpo_for_iteration(iteration).key_fields(), "iteration": iteration, "seed": recipe.seed}
    return cache_key("dpo", settings=settings, inputs={"model": model, "pairs": pairs})
