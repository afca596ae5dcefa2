"""How far a trained policy moved from its reference (the SFT model), on the agent's own turns.

DPO's loss only sees log-prob ratios on the pairs it trains on; whether the policy changed where
it acts is a separate question. Here both models read the same trajectories (typically the
trained policy's own dev or evaluation episodes) and, at every agent token, we compare their
whole next-token distributions: KL(policy || reference), the quantity DPO's beta trades reward
against. A KL near zero means DPO left the agent's behaviour where SFT put it, whatever its loss
did; a large one with no reward gain means it moved somewhere that does not help.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from eto_core.logprobs import agent_token_logits
from eto_core.records import Trajectory
from eto_core.tokenization import encode_conversation


@dataclass
class DriftReport:
    """Means over the agent tokens of the trajectories read (per token), and per episode."""

    episodes: int
    agent_tokens: int
    kl_per_token: float
    """Mean over agent tokens of KL(policy || reference) of the next-token distribution, in nats."""
    kl_per_episode: float
    """Summed over an episode's agent tokens, averaged over episodes: the sequence-level KL."""
    policy_logp_per_token: float
    """Mean log-prob of the trajectories' own agent tokens under the policy."""
    reference_logp_per_token: float
    """... and under the reference: policy - reference is how much likelier the policy made them."""


def agent_token_kl(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    agent_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """At each agent token [n]: KL(policy || reference) of the distributions that predict it, and
    the token's log-prob under the policy and under the reference."""
    with torch.no_grad():
        p_logits, targets, _ = agent_token_logits(policy, input_ids, attention_mask, agent_mask)
        r_logits, _, _ = agent_token_logits(reference, input_ids, attention_mask, agent_mask)
    p_log = torch.log_softmax(p_logits, dim=-1)
    r_log = torch.log_softmax(r_logits, dim=-1)
    kl = (p_log.exp() * (p_log - r_log)).sum(dim=-1)
    pick = targets.unsqueeze(-1)
    return kl, p_log.gather(1, pick).squeeze(-1), r_log.gather(1, pick).squeeze(-1)


def policy_drift(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    trajectories: Iterable[Trajectory],
    max_length: int,
) -> DriftReport:
    """KL and log-prob shift of ``policy`` from ``reference`` over the trajectories' agent tokens.

    One episode per forward (no padding to reason about); an episode longer than ``max_length``
    tokens is read up to it, as training reads it.
    """
    kl_sum = p_sum = r_sum = 0.0
    tokens = episodes = 0
    for traj in trajectories:
        enc = encode_conversation(tokenizer, traj.messages, traj.num_prompt_messages, max_length)
        ids = torch.tensor([enc.input_ids])
        kl, p_logp, r_logp = agent_token_kl(policy, reference, ids, torch.ones_like(ids),
                                            torch.tensor([enc.agent_mask]))
        kl_sum += kl.sum().item()
        p_sum += p_logp.sum().item()
        r_sum += r_logp.sum().item()
        tokens += kl.numel()
        episodes += 1
    if not tokens:
        raise ValueError("policy_drift read no agent tokens: give it at least one trajectory with an agent turn.")
    return DriftReport(episodes=episodes, agent_tokens=tokens, kl_per_token=kl_sum / tokens,
                       kl_per_episode=kl_sum / episodes, policy_logp_per_token=p_sum / tokens,
                       reference_logp_per_token=r_sum / tokens)
