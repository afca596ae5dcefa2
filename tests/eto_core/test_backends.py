"""``policy.backend`` picks the engine (eto_core/backends.py), and the vLLM backend tells a user
without vLLM what to install. No GPU and no vLLM needed: vLLM is hidden or faked here."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from eto_core.backends import make_policy
from eto_core.config import PolicySettings
from eto_core.policy import GenerationSettings, LocalHFPolicy
from eto_core.remote_policy import OpenAICompatiblePolicy
from eto_core.vllm_policy import VLLMPolicy

GEN = GenerationSettings(max_new_tokens=12, temperature=0.5, batch_size=3, max_context_tokens=512, seed=7)


def _not_called(what: str) -> Any:
    def fail() -> Any:
        raise AssertionError(f"{what} must not be called for this backend")

    return fail


@pytest.mark.parametrize(("prefix_cache", "episode_cache", "shared_attention"),
                         [(True, True, True), (True, True, False), (True, False, True), (False, True, True),
                          (False, False, False)])
def test_hf_backend_is_the_local_policy_with_the_cache_settings(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, prefix_cache: bool, episode_cache: bool,
    shared_attention: bool,
) -> None:
    loads: list[int] = []

    def load_hf() -> tuple[Any, Any]:
        loads.append(1)
        return tiny_model, tiny_tokenizer

    settings = PolicySettings(backend="hf", prefix_cache=prefix_cache, episode_cache=episode_cache,
                              shared_prefix_attention=shared_attention)
    policy = make_policy(settings, GEN, model_uri="file:///models/sft", load_hf=load_hf,
                         model_path=_not_called("model_path"))
    assert type(policy) is LocalHFPolicy and loads == [1]
    assert policy.model is tiny_model and policy.tokenizer is tiny_tokenizer
    assert policy.settings == GEN and policy.model_uri == "file:///models/sft"
    # Shared-prefix attention reads the prefix cache's entries, so it needs that cache.
    assert policy.shared_prefix_attention == (shared_attention and prefix_cache)
    if prefix_cache or episode_cache:
        assert policy.kv_cache is not None
        assert (policy.kv_cache.use_shared, policy.kv_cache.episodes) == (prefix_cache, episode_cache)
    else:
        assert policy.kv_cache is None


def test_openai_backend_is_the_remote_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETO_TEST_API_KEY", "sk-test")
    settings = PolicySettings(backend="openai", base_url="http://127.0.0.1:9/v1/", model="served-model",
                              api_key_env="ETO_TEST_API_KEY", timeout_s=7.0)
    policy = make_policy(settings, GEN, model_uri="file:///ignored", load_hf=_not_called("load_hf"),
                         model_path=_not_called("model_path"))
    try:
        assert type(policy) is OpenAICompatiblePolicy
        assert policy.url == "http://127.0.0.1:9/v1/chat/completions" and policy.model == "served-model"
        # The endpoint, not the stage's artifact, names the model that answers.
        assert policy.model_uri == "openai:http://127.0.0.1:9/v1/#served-model" and policy.name == "served-model"
        assert policy.settings == GEN
        assert policy._api_key == "sk-test" and "sk-test" not in repr(policy)
        assert policy._client.timeout.read == 7.0
    finally:
        policy.close()


def test_openai_backend_needs_its_endpoint() -> None:
    with pytest.raises(ValueError, match=r"policy.base_url or policy.model is empty"):
        make_policy(PolicySettings(backend="openai", model="m"), GEN, model_uri="", load_hf=_not_called("load_hf"),
                    model_path=_not_called("model_path"))


def test_vllm_backend_without_vllm_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed, whether it is or not
    with pytest.raises(ImportError, match=r"vLLM is not installed; install it with pip install 'eto\[vllm\]'") as err:
        make_policy(PolicySettings(backend="vllm"), GEN, model_uri="file:///models/sft",
                    load_hf=_not_called("load_hf"), model_path=lambda: "/models/sft")
    assert "policy.backend: hf" in str(err.value)  # and the way out without a GPU
    assert isinstance(err.value.__cause__, ImportError)


def test_vllm_backend_builds_the_engine_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[dict[str, Any]] = []

    class FakeLLM:
        def __init__(self, **kwargs: Any) -> None:
            built.append(kwargs)

        def get_tokenizer(self) -> str:
            return "tokenizer"

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    settings = PolicySettings(backend="vllm", gpu_memory_utilization=0.5)
    policy = make_policy(settings, GEN, model_uri="file:///models/sft", load_hf=_not_called("load_hf"),
                         model_path=lambda: "/models/sft", trust_remote_code=True)
    assert type(policy) is VLLMPolicy
    assert policy.model_uri == "file:///models/sft" and policy.settings == GEN and policy.tokenizer == "tokenizer"
    assert built == [{"model": "/models/sft", "enable_prefix_caching": True, "gpu_memory_utilization": 0.5,
                      "max_model_len": 512, "seed": 7, "trust_remote_code": True}]
