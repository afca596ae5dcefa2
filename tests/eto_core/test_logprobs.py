"""Agent-token log-probs without full logits (eto_core/logprobs.py), and bf16 autocast in the
SFT and DPO losses that use them."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from eto_core.dpo import DPOSettings, train_dpo
from eto_core.logprobs import _head_split, agent_token_logps, sequence_logps
from eto_core.lora import LoraSettings, apply_lora
from eto_core.records import PreferencePair, Trajectory
from eto_core.sft import SFTSettings, train_sft
from eto_core.tokenization import encode_conversation


def _batch(tokenizer: PreTrainedTokenizerFast, trajs: list[Trajectory]) -> tuple[torch.Tensor, ...]:
    encs = [encode_conversation(tokenizer, t.messages, t.num_prompt_messages, 4096) for t in trajs]
    width = max(len(e.input_ids) for e in encs)
    ids = torch.zeros((len(encs), width), dtype=torch.long)
    attn = torch.zeros_like(ids)
    agent = torch.zeros_like(ids)
    for i, e in enumerate(encs):  # right padding, as the collators do
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        attn[i, : len(e.input_ids)] = 1
        agent[i, : len(e.input_ids)] = torch.tensor(e.agent_mask)
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
