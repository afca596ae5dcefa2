"""Stage artifacts: where a stage's result lives and how it is reused, claimed and published.

A stage computes its key (eto_core.stages.keys), then, holding the store's claim on it, either
reuses the artifact already published under the key or computes and publishes a new one, so a
crashed or repeated run resumes from every finished stage and runs side by side compute a shared
stage once. This module also reads and writes the record files and model folders stages hand on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eto_core.config import Recipe
from eto_core.memory import release_memory
from eto_core.modeling import load_model, save_model
from eto_core.records import (
    frame_to_pairs,
    frame_to_trajectories,
    read_records,
    to_frame,
    write_records,
)
from eto_core.storage import ArtifactRef, ArtifactStore
from eto_core.training import TrainResult

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


def _reuse(store: ArtifactStore, stage: str, key: str) -> StageResult | None:
    uri = store.uri_for(stage, key)
    manifest = store.read_manifest(uri)
    if manifest is None:
        return None
    meta = manifest.get("meta", {})
    return StageResult(stage, ArtifactRef(uri, manifest["digest"]), dict(meta.get("metrics", {})), True, meta.get("info", {}))


@contextmanager
def claim(store: ArtifactStore, stage: str, key: str) -> Iterator[StageResult | None]:
    """Hold the store's claim on ``stage``/``key`` and yield its artifact if one is published.

    A stage computes and publishes inside the claim, so a second run reaching the same key at
    the same time waits and reuses the first one's artifact instead of computing it again."""
    with store.claim(store.uri_for(stage, key)):
        hit = _reuse(store, stage, key)
        if hit is None:
            # Before computing: what the stages before this one freed (on other threads' malloc
            # arenas) goes back to the system instead of staying beside this stage's memory.
            release_memory(collect=False)
        yield hit


def publish(store: ArtifactStore, stage: str, key: str, folder: Path, metrics: dict[str, float], info: dict[str, Any]) -> StageResult:
    ref = store.publish(folder, store.uri_for(stage, key), meta={"metrics": metrics, "info": info})
    return StageResult(stage, ref, metrics, False, info)


def write_trajectories(folder: Path, trajs: list[Any], name: str = TRAJ_FILE) -> None:
    write_records(to_frame(trajs, "trajectories"), folder / name, "trajectories")


def read_trajectories(store: ArtifactStore, ref: ArtifactRef, name: str = TRAJ_FILE) -> list[Any]:
    return frame_to_trajectories(read_records(store.fetch(ref) / name, "trajectories"))


def read_pairs(store: ArtifactStore, ref: ArtifactRef) -> list[Any]:
    return frame_to_pairs(read_records(store.fetch(ref) / PAIRS_FILE, "pairs"))


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


def save_trained(folder: Path, result: TrainResult, tokenizer: Any, prefix: str) -> dict[str, float]:
    """Save the trained model and its loss curve into the stage folder; the stage's metrics."""
    save_model(result.model, tokenizer, folder / MODEL_DIR)
    drop_trainer_dir(folder)
    # The Trainer is garbage by now, but its cycles keep the optimizer state and activations'
    # memory until a collection: free them before the next stage allocates.
    release_memory()
    # The loss curve goes to the manifest's meta and MLflow, not into a file: it holds wall
    # times, which would make the artifact's content digest (and every key after it) differ
    # between two runs that trained the very same weights.
    return {
        f"{prefix}_first_loss": result.first_loss,
        f"{prefix}_last_loss": result.last_loss,
        f"{prefix}_steps": float(result.num_steps),
        f"{prefix}_runtime_s": result.runtime_s,
        f"{prefix}_tokens_per_s": result.num_tokens / result.runtime_s if result.runtime_s > 0 else 0.0,
        f"{prefix}_truncated": float(result.num_truncated),
        f"{prefix}_peak_memory_mb": result.peak_memory_mb,
        # The torch threads the training ran on (this thread's count): tokens/s depends on it.
        f"{prefix}_torch_threads": float(torch.get_num_threads()),
    }


def drop_trainer_dir(folder: Path) -> None:
    shutil.rmtree(folder / "trainer", ignore_errors=True)
