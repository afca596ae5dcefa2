"""The stages whose artifact is a model: model_init (the starting model), SFT, RFT and DPO."""

from __future__ import annotations

import json
from typing import Any

from eto_core.config import Recipe
from eto_core.dpo import train_dpo
from eto_core.model_source import convert_gguf, is_gguf, resolve_model_path
from eto_core.modeling import build_tiny_model, load_model, save_model, train_tokenizer
from eto_core.pairs import (
    no_pairs_message,
    strip_example,
)
from eto_core.pretrain import pretrain_lm
from eto_core.seeding import seed_everything, seeded
from eto_core.sft import train_sft
from eto_core.stages.artifacts import (
    MODEL_DIR,
    POINTER_FILE,
    StageResult,
    claim,
    drop_trainer_dir,
    load_stage_model,
    publish,
    read_pairs,
    read_trajectories,
    save_trained,
)
from eto_core.stages.keys import dpo_key, model_init_key, rft_key, sft_key, strips_example
from eto_core.storage import ArtifactRef, ArtifactStore


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
        with claim(store, "model_init", key) as hit:
            if hit is not None:
                return hit
            folder = store.staging_dir()
            metrics = convert_gguf(source, folder / MODEL_DIR)
            # As for any base model: a template or tokenizer that cannot be used fails before training.
            load_model(folder / MODEL_DIR, chat_template=recipe.model.chat_template)
            return publish(store, "model_init", key, folder, metrics, {"base": recipe.model.path, "gguf": source})
    if recipe.model.path is not None:
        with claim(store, "model_init", key) as hit:
            if hit is not None:
                return hit
            # Validate now (tokenizer, chat template, weights) so a bad path fails before any training.
            load_model(recipe.model.path, trust_remote_code=recipe.model.trust_remote_code,
                       chat_template=recipe.model.chat_template)
            folder = store.staging_dir()
            (folder / POINTER_FILE).write_text(json.dumps({"path": recipe.model.path}))
            return publish(store, "model_init", key, folder, {}, {"base": recipe.model.path})

    with claim(store, "model_init", key) as hit:
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
            drop_trainer_dir(folder)
            metrics.update({"pretrain_first_loss": pre.first_loss, "pretrain_last_loss": pre.last_loss,
                            "pretrain_steps": float(pre.num_steps), "pretrain_runtime_s": pre.runtime_s,
                            "pretrain_peak_memory_mb": pre.peak_memory_mb})
            info["log_history"] = pre.log_history
        save_model(model, tokenizer, folder / MODEL_DIR)
        return publish(store, "model_init", key, folder, metrics, info)


def sft_stage(recipe: Recipe, store: ArtifactStore, base: ArtifactRef, expert: ArtifactRef) -> StageResult:
    key = sft_key(recipe, base, expert)
    with claim(store, "sft", key) as hit:
        if hit is not None:
            return hit
        seed_everything(recipe.seed)
        model, tokenizer = load_stage_model(recipe, store, base)
        trajs = read_trajectories(store, expert)
        folder = store.staging_dir()
        result = train_sft(model, tokenizer, trajs, seeded(recipe.sft, recipe), str(folder / "trainer"))
        metrics = save_trained(folder, result, tokenizer, "sft")
        return publish(store, "sft", key, folder, metrics, {"log_history": result.log_history})


def rft_stage(
    recipe: Recipe, store: ArtifactStore, base: ArtifactRef, expert: ArtifactRef | None, explored: ArtifactRef
) -> StageResult:
    """Rejection-sampling fine-tuning: SFT from the base model on the expert trajectories (if any)
    plus the agent's own successful explored trajectories (each distinct one once)."""
    key = rft_key(recipe, base, expert, explored)
    with claim(store, "rft", key) as hit:
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
        metrics = {**save_trained(folder, result, tokenizer, "rft"), "rft_own_successes": float(len(own)),
                   "rft_expert_trajectories": float(len(experts)), "rft_sampled": float(len(sampled))}
        return publish(store, "rft", key, folder, metrics, {"log_history": result.log_history})


def dpo_stage(recipe: Recipe, store: ArtifactStore, model: ArtifactRef, pairs: ArtifactRef, iteration: int) -> StageResult:
    settings = seeded(recipe.dpo_for_iteration(iteration), recipe)
    key = dpo_key(recipe, model, pairs, iteration)
    with claim(store, "dpo", key) as hit:
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
            **save_trained(folder, result, tokenizer, "dpo"),
            "dpo_ref_logps_s": result.ref_logps_seconds,
            **{f"dpo_{k.replace('/', '_')}": float(v) for k, v in result.metrics.items()},
        }
        return publish(store, "dpo", key, folder, metrics, {"log_history": result.log_history})
