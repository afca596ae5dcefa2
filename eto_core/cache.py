"""Explicit, content-based, versioned cache keys for pipeline stages.

A key hashes exactly what changes a stage's result: the stage name, the stage's code version,
the global cache version, the settings that stage reads, and the content digests of its input
artifacts. Bump ``CACHE_VERSION`` to invalidate everything, or a stage's entry in
``STAGE_VERSIONS`` when that stage's code changes its output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from eto_core.storage import ArtifactRef

CACHE_VERSION = "1"
STAGE_VERSIONS: dict[str, int] = {
    "model_init": 1,
    "expert": 1,
    "sft": 1,
    "explore": 2,  # 2: rollouts run in checkpointed shards, sampling seeded per shard
    "explore_shard": 1,
    "explore_step": 1,  # continuations from expert prefixes (step-level pairs)
    "explore_step_shard": 1,
    "pairs": 1,
    "dpo": 1,
    "evaluate": 2,
    "evaluate_shard": 1,
    "select": 1,
    "select_shard": 1,
    "best_of_n": 1,
    "best_of_n_shard": 1,
    "rft_explore": 1,
    "rft_explore_shard": 1,
    "rft": 1,
}


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, ArtifactRef):
        return value.digest
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def cache_key(
    stage: str,
    *,
    settings: Mapping[str, Any],
    inputs: Mapping[str, ArtifactRef | None] | None = None,
    version: str = CACHE_VERSION,
) -> str:
    """A short hex key for ``stage`` given its settings and input artifacts (by content digest)."""
    if stage not in STAGE_VERSIONS:
        raise KeyError(f"unknown stage '{stage}'; add it to STAGE_VERSIONS")
    payload = {
        "stage": stage,
        "stage_version": STAGE_VERSIONS[stage],
        "cache_version": version,
        "settings": _plain(settings),
        "inputs": _plain(inputs or {}),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]
