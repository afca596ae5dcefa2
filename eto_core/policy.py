"""Agent policies: something that writes the next agent turn for many conversations at once.

The rollout engine only needs ``Policy.generate``: one call per engine step over every live
episode, so a local model sees one batch per step instead of one call per episode. Only real
policies live here (a local Hugging Face model); tests define their own scripted ones.

A conversation that no longer fits in the model's context gets ``None`` instead of a turn;
the rollout ends that episode with terminate_reason "max_length" rather than truncating the
prompt (a truncated prompt silently loses the instruction and would poison the records).
"""

from __future__ import annotations

import copy
import inspect
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import (
    DynamicCache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from eto_core.records import Message


@runtime_checkable
class Policy(Protocol):
    """Writes one agent turn per conversation.

    ``generate`` returns, per conversation and in order, the agent's raw text (stripped), or
    ``None`` where the conversation plus the turn would not fit in the model's context.
    """

    name: str
    model_uri: str

    def generate(self, conversations: Sequence[list[Message]]) -> list[str | None]: ...


class GenerationSettings(BaseModel):
    """How a local model writes agent turns during exploration and evaluation."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=64, ge=1, description="Most tokens in one agent turn.")
    temperature: float = Field(
        default=0.0,
        ge=0.0,
        description="0 decodes greedily (deterministic); above 0 samples with this temperature.",
    )
    top_p: float = Field(
        default=1.0, gt=0.0, le=1.0, description="Nucleus-sampling mass; used only when sampling."
    )
    batch_size: int = Field(
        default=32,
        ge=1,
        description="Episodes in flight; also the most conversations in one model.generate call.",
    )
    max_context_tokens: int = Field(
        default=2048,
        ge=16,
        description=(
            "Prompt tokens + max_new_tokens may not exceed this (nor the model's position table); "
            "a longer episode ends with terminate_reason 'max_length'."
        ),
    )
    seed: int = Field(default=0, description="Seeds sampling, so a sampled rollout can be reproduced.")
    shard_size: int = Field(
        default=64,
        ge=1,
        description=(
            "Episodes per checkpointed shard: each finished shard is saved as its own artifact, so a "
            "run that crashes mid-rollout redoes at most one shard."
        ),
    )


# The action line is complete once a non-empty "Action: ..." is followed by a newline; the
# format has nothing after it, so decoding further only wastes time (eos is the usual stop).
_ACTION_LINE_DONE = re.compile(r"Action:[ \t]*\S[^\n]*\n")


class _ActionLineStop(StoppingCriteria):
    """Per-row stop once the agent turn's action line is complete.

    Decoding every row at every step would cost more than it saves, so a row is only decoded
    when its newest token contains a newline (the only token that can complete the line).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_len: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        vocab: dict[str, int] = tokenizer.get_vocab()
        newline_ids = [i for i in vocab.values() if "\n" in tokenizer.decode([i])]
        self.newline_ids = torch.tensor(sorted(newline_ids), dtype=torch.long)

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if input_ids.shape[1] <= self.prompt_len or self.newline_ids.numel() == 0:
            return done  # type: ignore[return-value]
        last = input_ids[:, -1].cpu()
        for row in torch.nonzero(torch.isin(last, self.newline_ids)).flatten().tolist():
            text = self.tokenizer.decode(input_ids[row, self.prompt_len :].tolist(), skip_special_tokens=True)
            if _ACTION_LINE_DONE.search(str(text)):
                done[row] = True
        return done  # type: ignore[return-value]


class LocalHFPolicy:
    """A Hugging Face causal LM in this process, generating in left-padded batches.

    Each ``generate`` call runs one ``model.generate`` per ``settings.batch_size`` conversations
    (one call when the engine keeps ``batch_size`` episodes live). Greedy decoding when
    temperature is 0, so the same conversations give the same turns whatever the batch holds.
    Sampling is seeded from ``settings.seed`` and a per-policy call counter, so a rollout
    repeated from a fresh policy reproduces; the global torch RNG is left untouched.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        settings: GenerationSettings | None = None,
        model_uri: str = "",
        name: str = "",
        prefix_cache: bool = False,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or GenerationSettings()
        self.model_uri = model_uri
        self.name = name or model_uri or type(model).__name__
        if tokenizer.eos_token_id is None:
            raise ValueError(
                "the tokenizer has no eos token; generation could not stop at the end of a turn."
            )
        # A pad id is needed to left-pad batches; eos doubles as pad when the tokenizer has none
        # (padded positions are masked out, so the choice does not change the output).
        pad = tokenizer.pad_token_id
        self.pad_token_id: int = int(pad if pad is not None else tokenizer.eos_token_id)
        # Positions past the model's table would fail or give garbage, so the context limit is
        # the tighter of the setting and the model's own limit.
        model_max = getattr(model.config, "max_position_embeddings", None)
        limit = self.settings.max_context_tokens
        self.max_context_tokens: int = min(limit, int(model_max)) if model_max else limit
        self._stop: _ActionLineStop | None = None
        self._calls = 0
        self.generated_tokens = 0
        """New tokens produced so far (for throughput reports)."""
        self.prefilled_tokens = 0
        """Prompt tokens run through the model so far (those served from the prefix cache excluded)."""
        self.prefix_cache = _PrefixCache(model) if prefix_cache else None

    def encode(self, conversation: list[Message]) -> list[int]:
        """Token ids of the conversation followed by the agent-turn header."""
        ids = self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids)  # type: ignore[arg-type]

    def fits(self, conversation: list[Message]) -> bool:
        """Whether the conversation leaves room for a whole agent turn in the context."""
        return len(self.encode(conversation)) + self.settings.max_new_tokens <= self.max_context_tokens

    def generate(self, conversations: Sequence[list[Message]]) -> list[str | None]:
        encoded = [self.encode(conv) for conv in conversations]
        out: list[str | None] = [None] * len(conversations)
        room = self.max_context_tokens - self.settings.max_new_tokens
        todo = [i for i, ids in enumerate(encoded) if len(ids) <= room]
        size = self.settings.batch_size
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            for i, text in zip(chunk, self._generate_batch([encoded[i] for i in chunk]), strict=True):
                out[i] = text
        return out

    def _generate_batch(self, batch: list[list[int]]) -> list[str]:
        prefix: tuple[int, ...] = ()
        cache: Any = None
        if self.prefix_cache is not None:
            prefix, cache = self.prefix_cache.lookup(batch)
        p = len(prefix)
        width = p + max(len(ids) - p for ids in batch)
        # Padding sits between the shared prefix (cached, every row's first p tokens) and each
        # row's own suffix, which ends in the last column: new tokens line up, and HF derives
        # positions from the attention mask, so a suffix continues exactly where its prefix ends.
        # Without a cached prefix (p = 0) this is plain left padding.
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, :p] = torch.tensor(ids[:p], dtype=torch.long)
            mask[row, :p] = 1
            input_ids[row, width - len(ids) + p :] = torch.tensor(ids[p:], dtype=torch.long)
            mask[row, width - len(ids) + p :] = 1
        self.prefilled_tokens += sum(len(ids) - p for ids in batch)
        device = self.model.device
        input_ids, mask = input_ids.to(device), mask.to(device)
        if self._stop is None:
            self._stop = _ActionLineStop(self.tokenizer, width)
        self._stop.prompt_len = width
        s = self.settings
        kwargs: dict[str, Any] = {
            "max_new_tokens": s.max_new_tokens,
            "eos_token_id": self.tokenizer.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "stopping_criteria": StoppingCriteriaList([self._stop]),
        }
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=None)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        self._calls += 1
        self.model.eval()
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            # fork_rng keeps the caller's RNG stream as it was; seeding per call makes a
            # sampled rollout reproducible from the settings alone.
            torch.manual_seed(s.seed * 1_000_003 + self._calls)
            generate: Any = self.model.generate  # typed loosely by transformers
            if cache is not None:
                kwargs[self.prefix_cache.cache_kwarg] = cache  # type: ignore[union-attr]
            sequences = generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        new = sequences[:, width:].cpu()
        texts: list[str] = []
        eos = self.tokenizer.eos_token_id
        for row in new.tolist():
            # Cut at the first eos: rows that finished early are filled with pad afterwards.
            if eos in row:
                row = row[: row.index(eos)]
                self.generated_tokens += len(row) + 1
            else:
                while row and row[-1] == self.pad_token_id:
                    row.pop()
                self.generated_tokens += len(row)
            texts.append(str(self.tokenizer.decode(row, skip_special_tokens=True)).strip())
        return texts


class _PrefixCache:
    """KV caches of prompt prefixes that whole batches share (instruction + one-shot example).

    Every conversation in a rollout starts with the same system instruction and one-shot
    example, often most of the prompt; without this, each row re-encodes it at every step. A
    batch reuses the longest cached prefix all its rows start with; a batch of two or more rows
    with none caches its common prefix (a lone row's "common prefix" is its whole prompt, which
    is never seen again). Each use copies the cached tensors, since generation appends to them.
    """

    MIN_TOKENS = 16
    """Shorter shared prefixes are not worth a cache entry."""

    def __init__(self, model: PreTrainedModel, size: int = 4) -> None:
        self.model = model
        self.size = size
        self.entries: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        params = inspect.signature(model.forward).parameters
        # transformers renamed past_key_values to cache during 5.x; use whichever this one takes.
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.hits = 0
        self.misses = 0

    def lookup(self, batch: list[list[int]]) -> tuple[tuple[int, ...], Any]:
        """The prefix to reuse for ``batch`` and a fresh copy of its cache expanded to the batch,
        or ``((), None)``. A prefix always leaves each row at least one token to encode."""
        shortest = min(len(ids) for ids in batch)
        for prefix in sorted(self.entries, key=len, reverse=True):
            if len(prefix) < shortest and all(tuple(ids[: len(prefix)]) == prefix for ids in batch):
                self.entries.move_to_end(prefix)
                self.hits += 1
                return prefix, self._expanded(self.entries[prefix], len(batch))
        if len(batch) < 2:
            return (), None
        common = _common_prefix(batch)[: shortest - 1]
        if len(common) < self.MIN_TOKENS:
            return (), None
        self.misses += 1
        self.entries[common] = self._encode(common)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return common, self._expanded(self.entries[common], len(batch))

    def _encode(self, prefix: tuple[int, ...]) -> Any:
        ids = torch.tensor([prefix], dtype=torch.long, device=self.model.device)
        cache = DynamicCache(config=self.model.config)
        self.model.eval()
        with torch.inference_mode():
            self.model(input_ids=ids, use_cache=True, **{self.cache_kwarg: cache})
        return cache

    @staticmethod
    def _expanded(cache: Any, rows: int) -> Any:
        with torch.inference_mode():  # the cached tensors are inference tensors
            copy_ = copy.deepcopy(cache)
            if rows > 1:
                copy_.batch_repeat_interleave(rows)
        return copy_


def _common_prefix(batch: list[list[int]]) -> tuple[int, ...]:
    first = batch[0]
    n = min(len(ids) for ids in batch)
    for i in range(n):
        token = first[i]
        if any(ids[i] != token for ids in batch):
            return tuple(first[:i])
    return tuple(first[:n])
