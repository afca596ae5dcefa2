"""The policy backend named by the recipe (``policy.backend``), built for one rollout shard.

A backend is a config choice: the rollout engine only sees the ``Policy`` protocol. Models are
loaded lazily through the callables, so a shard whose artifact already exists loads nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from eto_core.config import PolicySettings
from eto_core.policy import GenerationSettings, LocalHFPolicy, Policy


def make_policy(
    settings: PolicySettings,
    gen: GenerationSettings,
    *,
    model_uri: str,
    load_hf: Callable[[], tuple[Any, Any]],
    model_path: Callable[[], str],
    trust_remote_code: bool = False,
) -> Policy:
    """A policy writing turns with ``gen``'s settings on the chosen backend."""
    if settings.backend == "hf":
        model, tokenizer = load_hf()
        return LocalHFPolicy(model, tokenizer, gen, model_uri=model_uri, prefix_cache=settings.prefix_cache,
                             episode_cache=settings.episode_cache,
                             shared_prefix_attention=settings.shared_prefix_attention,
                             lookup_draft=settings.lookup_draft)
    if settings.backend == "vllm":
        from eto_core.vllm_policy import VLLMPolicy

        return VLLMPolicy(model_path(), gen, model_uri=model_uri, gpu_memory_utilization=settings.gpu_memory_utilization,
                          trust_remote_code=trust_remote_code)
    from eto_core.remote_policy import OpenAICompatiblePolicy

    if not settings.base_url or not settings.model:
        raise ValueError("policy.backend is 'openai' but policy.base_url or policy.model is empty; set both.")
    return OpenAICompatiblePolicy(
        settings.base_url, settings.model, gen, api_key=os.environ.get(settings.api_key_env),
        timeout_s=settings.timeout_s, model_uri=f"openai:{settings.base_url}#{settings.model}",
        name=settings.model,
    )
