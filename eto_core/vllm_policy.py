"""The vLLM backend: the stage's model in an in-process vLLM engine (GPU only, optional extra).

vLLM batches every live conversation itself (continuous batching) and, with prefix caching
on, reuses the KV cache of the shared instruction + one-shot prefix and of each episode's
earlier turns, which the hf backend re-encodes. Prompts are tokenized with the model's own
chat template here, exactly as the hf backend does, so both backends see the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eto_core.policy import ACTION_LINE_DONE, GenerationSettings
from eto_core.records import Message


class VLLMPolicy:
    """Writes agent turns with ``vllm.LLM`` on the model folder at ``model_path``."""

    def __init__(
        self,
        model_path: str,
        settings: GenerationSettings,
        *,
        model_uri: str = "",
        name: str = "",
        gpu_memory_utilization: float = 0.85,
        trust_remote_code: bool = False,
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError(
                "policy.backend is 'vllm' but vLLM is not installed; install it with pip install 'eto[vllm]' "
                "(needs a CUDA GPU), or set policy.backend: hf."
            ) from exc
        self.settings = settings
        self.model_uri = model_uri
        self.name = name or model_uri or model_path
        self.llm: Any = LLM(
            model=model_path,
            enable_prefix_caching=True,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=settings.max_context_tokens,
            seed=settings.seed,
            trust_remote_code=trust_remote_code,
        )
        self.tokenizer: Any = self.llm.get_tokenizer()
        self._calls = 0
        self.generated_tokens = 0

    def encode(self, conversation: list[Message]) -> list[int]:
        return list(self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True))

    def generate(self, conversations: Sequence[list[Message]]) -> list[str | None]:
        from vllm import SamplingParams, TokensPrompt

        s = self.settings
        room = s.max_context_tokens - s.max_new_tokens
        encoded = [self.encode(c) for c in conversations]
        todo = [i for i, ids in enumerate(encoded) if len(ids) <= room]
        self._calls += 1
        params = SamplingParams(
            max_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p if s.temperature > 0 else 1.0,
            # Per-call seed as in the hf backend: a sampled rollout repeats from the settings.
            seed=s.seed * 1_000_003 + self._calls if s.temperature > 0 else None,
        )
        prompts = [TokensPrompt(prompt_token_ids=encoded[i]) for i in todo]
        outputs = self.llm.generate(prompts, params, use_tqdm=False) if prompts else []
        out: list[str | None] = [None] * len(conversations)
        for i, result in zip(todo, outputs, strict=True):
            completion = result.outputs[0]
            self.generated_tokens += len(completion.token_ids)
            text = completion.text
            match = ACTION_LINE_DONE.search(text)
            out[i] = (text[: match.end()] if match else text).strip()
        return out
