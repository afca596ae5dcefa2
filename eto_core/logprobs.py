"""Log-probabilities of the agent's tokens, without the full-vocabulary logits of every position.

SFT's loss and DPO's sequence scores only read the positions that predict an agent token, a
third or less of a trajectory (the prompt and the observations are the rest). A real
vocabulary is large (SmolLM2: 49,152), so projecting every position through the LM head would
spend most of the step's memory and much of its time on logits nobody reads. Here the model's
backbone runs on the whole sequence, and the LM head only on the hidden states that predict an
agent token.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from peft import PeftModel


def _head_split(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The backbone (hidden states out) and LM head of a causal LM, or None where the logits
    are more than ``lm_head(hidden)`` (a soft cap or scale in the model's forward)."""
    inner: Any = model.get_base_model() if isinstance(model, PeftModel) else model
    get_head = getattr(inner, "get_output_embeddings", None)
    backbone = getattr(inner, "base_model", None)
    if not callable(get_head) or backbone is None or backbone is inner:
        return None
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    for scaled in ("final_logit_softcapping", "logit_scale", "output_multiplier", "logits_scaling",
                   "lm_head_multiplier"):
        if getattr(config, scaled, None) not in (None, 1, 1.0):
            return None
    head = get_head()
    if head is None:
        return None
    return backbone, head


def agent_token_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    agent_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    past_key_values: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(input_ids[b, t] | input_ids[b, <t]) at every (b, t) where agent_mask[b, t] is 1.

    Returns the flat log-probs [n] and the row each belongs to [n], in row-major order. The
    logits at position t-1 predict token t, so the mask is read at the predicted token: an agent
    token is scored from the history before it; a mask on position 0 (nothing predicts it) is
    ignored. The LM head runs in float32 outside autocast, so bf16 training scores in fp32.
    With ``past_key_values``, ``input_ids`` continue the cached tokens (give their positions);
    the first token is still not scored, as the cache holds no hidden state to predict it.
    """
    picked, targets, rows = agent_token_logits(model, input_ids, attention_mask, agent_mask, position_ids,
                                               past_key_values)
    # gather - logsumexp avoids a second [n, vocab] tensor from log_softmax
    target_logits = torch.gather(picked, 1, targets.unsqueeze(-1)).squeeze(-1)
    return target_logits - torch.logsumexp(picked, dim=-1), rows


def agent_token_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    agent_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    past_key_values: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The float32 logits [n, vocab] that predict each agent token, the tokens [n] and their rows
    [n] (as ``agent_token_logps``, which reads one entry of each; a KL needs the whole row)."""
    predicts = agent_mask[:, 1:].bool()
    rows = torch.nonzero(predicts, as_tuple=True)[0]
    targets = input_ids[:, 1:][predicts]
    split = _head_split(model)
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if position_ids is not None:  # packed rows restart their positions
        inputs["position_ids"] = position_ids
    if past_key_values is not None:  # input_ids continue the cached tokens (a shared prompt prefix)
        target = model if split is None else split[0]
        # transformers renamed past_key_values to cache during 5.x; use whichever this one takes.
        inputs["cache" if "cache" in inspect.signature(target.forward).parameters else "past_key_values"] = past_key_values
        inputs["use_cache"] = True
    if split is None:  # the model's own forward, all positions
        logits = model(**inputs).logits
        picked = logits[:, :-1][predicts].float()
    else:
        backbone, head = split
        hidden = backbone(**inputs).last_hidden_state
        chosen = hidden[:, :-1][predicts]
        with torch.autocast(chosen.device.type, enabled=False):
            weight: torch.Tensor = head.weight  # type: ignore[assignment]  # an nn.Linear / Embedding weight
            bias: torch.Tensor | None = getattr(head, "bias", None)
            picked = torch.nn.functional.linear(chosen.float(), weight.float(), None if bias is None else bias.float())
    return picked, targets, rows


def sequence_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    agent_mask: torch.Tensor,
) -> torch.Tensor:
    """sum_t log p(input_ids[t] | input_ids[<t]) over the positions t where agent_mask is 1.

    Shapes [batch, seq] in, [batch] out. Observation tokens (mask 0) are never scored, whatever
    the model thinks of them.
    """
    token_logps, rows = agent_token_logps(model, input_ids, attention_mask, agent_mask)
    out = torch.zeros(input_ids.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return out.index_add(0, rows, token_logps)
