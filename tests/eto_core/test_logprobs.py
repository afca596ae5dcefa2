"""Agent-token log-probs without full logits (eto_core/logprobs.py), and bf16 autocast in the
SFT and DPO losses that use them."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from eto_core.dpo import DPOSettings, train_dpo
from eto_core.logprobs import _head_split, agent_token_logps, sequence_logps
from eto_core.lora import LoraSettings, apply_lora
from eto_core.records import PreferencePair, Trajectory
from eto_core.sft import SFTSettings, train_sft
from eto_core.tokenization import encode_conversation


def _batch(tokenizer: PreTrainedTokenizerFast, trajs: list[Trajectory], left: bool = False) -> tuple[torch.Tensor, ...]:
    encs = [encode_conversation(tokenizer, t.messages, t.num_prompt_messages, 4096) for t in trajs]
    width = max(len(e.input_ids) for e in encs)
    ids = torch.zeros((len(encs), width), dtype=torch.long)
    attn = torch.zeros_like(ids)
    agent = torch.zeros_like(ids)
    for i, e in enumerate(encs):  # right padding, as the collators do (or left padding)
        at = slice(width - len(e.input_ids), width) if left else slice(0, len(e.input_ids))
        ids[i, at] = torch.tensor(e.input_ids)
        attn[i, at] = 1
        agent[i, at] = torch.tensor(e.agent_mask)
    return ids, attn, agent


def _full_logits_reference(model: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor,
                           agent: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    logps = torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None]).squeeze(-1)
    return logps[agent[:, 1:].bool()]


def test_lm_head_on_agent_positions_only_equals_the_full_logits(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, toy_trajectories: list[Trajectory]
) -> None:
    ids, attn, agent = _batch(tiny_tokenizer, toy_trajectories[:3])
    assert _head_split(tiny_model) is not None  # the fast path is the one under test
    with torch.no_grad():
        fast, rows = agent_token_logps(tiny_model, ids, attn, agent)
        full = _full_logits_reference(tiny_model, ids, attn, agent)
    assert fast.shape == full.shape and torch.allclose(fast, full, atol=1e-5)
    assert rows.tolist() == sorted(rows.tolist()) and set(rows.tolist()) == {0, 1, 2}
    per_row = sequence_logps(tiny_model, ids, attn, agent)
    for r in range(3):
        assert torch.allclose(per_row[r], full[rows == r].sum(), atol=1e-4)
    # Through a LoRA wrapper the backbone and head are found inside it.
    wrapped = apply_lora(tiny_model, LoraSettings(r=2))
    with torch.no_grad():
        assert torch.allclose(agent_token_logps(wrapped, ids, attn, agent)[0], full, atol=1e-5)


@pytest.mark.trains
def test_bf16_autocast_reaches_the_sft_loss_and_stays_within_tolerance(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, toy_trajectories: list[Trajectory],
    tmp_path: Path,
) -> None:
    """One step's loss in fp32 and under bf16 autocast: different numbers (so autocast is on:
    accelerate's forward wrapper is bypassed by our loss), within 2% of each other."""
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    losses = {}
    for bf16 in (False, True):
        tiny_model.load_state_dict(state)
        settings = SFTSettings(num_train_epochs=1, per_device_train_batch_size=len(toy_trajectories), bf16=bf16)
        losses[bf16] = train_sft(tiny_model, tiny_tokenizer, toy_trajectories, settings,
                                 str(tmp_path / str(bf16))).first_loss
    assert losses[True] != losses[False]
    assert math.isclose(losses[True], losses[False], rel_tol=0.02)


@pytest.mark.trains
def test_bf16_dpo_starts_at_log2_because_the_reference_is_scored_the_same_way(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, toy_pairs: list[PreferencePair],
    tmp_path: Path,
) -> None:
    """At step 0 the policy is the reference: the loss is exactly log 2 only if the precomputed
    reference log-probs were scored under the same autocast as the training forward."""
    settings = DPOSettings(num_train_epochs=1, per_device_train_batch_size=len(toy_pairs), bf16=True,
                           learning_rate=1e-3)
    result = train_dpo(tiny_model, tiny_tokenizer, toy_pairs, settings, str(tmp_path))
    assert math.isclose(result.first_loss, math.log(2), abs_tol=1e-4)


# --------------------------------------------------------------------------------------------
# The fast path's conditions and inputs (each pinned by a mutant that survived without it: make mutation)

SCALES = ("final_logit_softcapping", "logit_scale", "output_multiplier", "logits_scaling", "lm_head_multiplier")


def _lm(config: Any, **overrides: Any) -> SimpleNamespace:
    """Just what _head_split reads of a causal LM: its head, its backbone and its config."""
    head, backbone = torch.nn.Linear(2, 3), torch.nn.Identity()
    parts: dict[str, Any] = {"get_output_embeddings": lambda: head, "base_model": backbone, "config": config}
    parts.update(overrides)
    return SimpleNamespace(**{k: v for k, v in parts.items() if v is not None})


def test_head_split_needs_a_head_a_separate_backbone_and_plain_logits() -> None:
    plain = _lm(SimpleNamespace())
    assert _head_split(plain) == (plain.base_model, plain.get_output_embeddings())  # type: ignore[arg-type]
    assert _head_split(_lm(SimpleNamespace(), get_output_embeddings=None)) is None  # type: ignore[arg-type]
    assert _head_split(_lm(SimpleNamespace(), base_model=None)) is None  # type: ignore[arg-type]
    assert _head_split(_lm(SimpleNamespace(), get_output_embeddings=lambda: None)) is None  # type: ignore[arg-type]
    itself = _lm(SimpleNamespace())
    itself.base_model = itself  # a bare backbone is its own base model
    assert _head_split(itself) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("name", SCALES)
def test_head_split_refuses_logits_the_model_scales(name: str) -> None:
    """A soft cap or scale in the model's forward: lm_head(hidden) alone would be the wrong logits."""
    for value in (2, 2.0, 0.5):
        assert _head_split(_lm(SimpleNamespace(**{name: value}))) is None, value  # type: ignore[arg-type]
    for value in (None, 1, 1.0):  # unset or the identity: the head alone is the logits
        assert _head_split(_lm(SimpleNamespace(**{name: value}))) is not None, value  # type: ignore[arg-type]
    # A multimodal config keeps its text model's settings in a sub-config.
    text = SimpleNamespace(**{name: 2.0})
    assert _head_split(_lm(SimpleNamespace(get_text_config=lambda: text))) is None  # type: ignore[arg-type]


def test_the_fast_path_never_computes_the_full_logits(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, toy_trajectories: list[Trajectory],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids, attn, agent = _batch(tiny_tokenizer, toy_trajectories[:2])
    with torch.no_grad():
        full = _full_logits_reference(tiny_model, ids, attn, agent)

        def no_full_forward(*_: Any, **__: Any) -> None:
            raise AssertionError("the model's own forward projects every position through the LM head")

        monkeypatch.setattr(tiny_model, "forward", no_full_forward)
        assert torch.allclose(agent_token_logps(tiny_model, ids, attn, agent)[0], full, atol=1e-5)


def test_the_backbone_gets_the_mask_the_positions_and_no_cache(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, toy_trajectories: list[Trajectory]
) -> None:
    ids, attn, agent = _batch(tiny_tokenizer, toy_trajectories[:2])
    calls: list[dict[str, Any]] = []
    tiny_model.model.register_forward_pre_hook(lambda _m, _a, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        agent_token_logps(tiny_model, ids, attn, agent)
        agent_token_logps(tiny_model, ids, attn, agent, position_ids=positions)
    assert calls[0] == {"input_ids": ids, "attention_mask": attn, "use_cache": False}
    assert set(calls[1]) == {"input_ids", "attention_mask", "use_cache", "position_ids"}
    assert calls[1]["position_ids"] is positions  # packed rows restart their positions


def test_left_padding_is_masked_out(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, toy_trajectories: list[Trajectory]
) -> None:
    """Right padding comes after every scored token, so a lost attention mask would not show; left
    padding comes before them."""
    longer = replace(toy_trajectories[1], messages=[*toy_trajectories[1].messages,
                                                    {"role": "user", "content": "Observation: Nothing happens."},
                                                    {"role": "assistant", "content": "Thought: done.\nAction: look"}])
    ids, attn, agent = _batch(tiny_tokenizer, [toy_trajectories[0], longer, toy_trajectories[2]], left=True)
    assert attn[:, 0].tolist() == [0, 1, 0]  # the shorter rows start with padding
    with torch.no_grad():
        full = _full_logits_reference(tiny_model, ids, attn, agent)
        fast, rows = agent_token_logps(tiny_model, ids, attn, agent)
        per_row = sequence_logps(tiny_model, ids, attn, agent)
    assert torch.allclose(fast, full, atol=1e-5)
    for r in range(3):
        assert torch.allclose(per_row[r], full[rows == r].sum(), atol=1e-4)


class _WeightOnlyHead(torch.nn.Module):
    """An LM head with a weight and no bias attribute at all."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.weight)


@pytest.mark.parametrize("kind", ["biased", "weight_only"])
def test_the_fast_path_applies_the_heads_bias(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, toy_trajectories: list[Trajectory],
    kind: str,
) -> None:
    weight = tiny_model.lm_head.weight.detach().clone()
    head: torch.nn.Module
    if kind == "biased":
        head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=True)
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(torch.randn(weight.shape[0], generator=torch.Generator().manual_seed(0)))
    else:
        head = _WeightOnlyHead(weight)
    tiny_model.lm_head = head
    ids, attn, agent = _batch(tiny_tokenizer, toy_trajectories[:2])
    assert _head_split(tiny_model) is not None
    with torch.no_grad():
        full = _full_logits_reference(tiny_model, ids, attn, agent)
        assert torch.allclose(agent_token_logps(tiny_model, ids, attn, agent)[0], full, atol=1e-5)


@pytest.mark.parametrize("fast", [True, False], ids=["lm_head", "forward"])
def test_a_cached_prefix_scores_the_rest_as_the_whole_sequence_does(
    tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast, toy_trajectories: list[Trajectory],
    monkeypatch: pytest.MonkeyPatch, fast: bool,
) -> None:
    """sft.shared_prefix's path: the prefix's keys/values in a cache, the rest of the row after it."""
    if not fast:  # a soft cap the forward would apply: the model's own forward is used
        monkeypatch.setattr(tiny_model.config, "final_logit_softcapping", 30.0, raising=False)
    assert (_head_split(tiny_model) is not None) == fast
    ids, attn, agent = _batch(tiny_tokenizer, toy_trajectories[:1])
    k = agent[0].tolist().index(1) - 2  # the prefix ends before the first agent token
    with torch.no_grad():
        whole, _ = agent_token_logps(tiny_model, ids, attn, agent)
        cache = tiny_model(input_ids=ids[:, :k], use_cache=True).past_key_values
        rest, rows = agent_token_logps(tiny_model, ids[:, k:], attn, agent[:, k:],
                                       position_ids=torch.arange(k, ids.shape[1])[None], past_key_values=cache)
    assert rest.shape == whole.shape and rows.tolist() == [0] * len(rows)
    assert torch.allclose(rest, whole, atol=1e-5)


class _Backbone(torch.nn.Module):
    """Hidden states from an embedding; records the cache it was given and under which name."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(8, 4)
        self.seen: dict[str, Any] = {}

    def hidden(self, input_ids: torch.Tensor, **seen: Any) -> SimpleNamespace:
        self.seen = seen
        return SimpleNamespace(last_hidden_state=self.embed(input_ids))


class _CacheBackbone(_Backbone):  # transformers after the rename
    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None, use_cache: Any = None,
                cache: Any = None) -> SimpleNamespace:
        return self.hidden(input_ids, use_cache=use_cache, cache=cache)


class _PastBackbone(_Backbone):  # transformers before it
    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None, use_cache: Any = None,
                past_key_values: Any = None) -> SimpleNamespace:
        return self.hidden(input_ids, use_cache=use_cache, past_key_values=past_key_values)


class _LM(torch.nn.Module):
    """A causal LM around a backbone; its forward takes the cache under the backbone's name."""

    def __init__(self, backbone: _Backbone, scaled: bool) -> None:
        super().__init__()
        self.backbone, self.lm_head = backbone, torch.nn.Linear(4, 8)
        self.config = SimpleNamespace(logit_scale=2.0 if scaled else None)

    @property
    def base_model(self) -> torch.nn.Module:
        return self.backbone

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head

    def logits(self, input_ids: torch.Tensor, **kwargs: Any) -> SimpleNamespace:
        return SimpleNamespace(logits=self.lm_head(self.backbone(input_ids, **kwargs).last_hidden_state))


class _CacheLM(_LM):
    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None, use_cache: Any = None,
                cache: Any = None) -> SimpleNamespace:
        return self.logits(input_ids, attention_mask=attention_mask, use_cache=use_cache, cache=cache)


class _PastLM(_LM):
    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None, use_cache: Any = None,
                past_key_values: Any = None) -> SimpleNamespace:
        return self.logits(input_ids, attention_mask=attention_mask, use_cache=use_cache,
                           past_key_values=past_key_values)


@pytest.mark.parametrize("scaled", [False, True], ids=["lm_head", "forward"])
@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_the_cache_goes_under_the_name_the_forward_takes(name: str, scaled: bool) -> None:
    """transformers renamed past_key_values to cache during 5.x (this one takes both names)."""
    model = _CacheLM(_CacheBackbone(), scaled) if name == "cache" else _PastLM(_PastBackbone(), scaled)
    assert (_head_split(model) is None) == scaled
    ids = torch.tensor([[1, 2, 3, 4]])
    cache = object()
    with torch.no_grad():
        agent_token_logps(model, ids, None, torch.ones_like(ids), past_key_values=cache)
    assert model.backbone.seen == {"use_cache": True, name: cache}
