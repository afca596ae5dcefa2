"""eto_core.policy_drift: KL(policy || reference) over the agent's tokens, against a computation
from the models' full logits."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from eto_core.policy_drift import agent_token_kl, policy_drift
from eto_core.records import Trajectory
from eto_core.tokenization import encode_conversation


def _moved(model: LlamaForCausalLM, scale: float = 0.05) -> LlamaForCausalLM:
    """A copy of ``model`` with every weight nudged (a stand-in for a trained policy)."""
    moved = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return moved


def _full_logits_kl(policy: torch.nn.Module, reference: torch.nn.Module, ids: list[int],
                    agent: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-agent-token KL and token log-probs from every position's logits (the slow, obvious way)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        p = torch.log_softmax(policy(input_ids=x).logits[0, :-1].float(), -1)
        r = torch.log_softmax(reference(input_ids=x).logits[0, :-1].float(), -1)
    kls, p_tok, r_tok = [], [], []
    for t in range(1, len(ids)):  # position t-1 predicts token t
        if agent[t]:
            kls.append(torch.sum(p[t - 1].exp() * (p[t - 1] - r[t - 1])))
            p_tok.append(p[t - 1, ids[t]])
            r_tok.append(r[t - 1, ids[t]])
    return torch.stack(kls), torch.stack(p_tok), torch.stack(r_tok)


def test_a_model_has_no_drift_from_itself(tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast,
                                           toy_trajectories: list[Trajectory]) -> None:
    report = policy_drift(tiny_model, tiny_model, tiny_tokenizer, toy_trajectories[:2], max_length=4096)
    assert report.episodes == 2 and report.agent_tokens > 0
    assert abs(report.kl_per_token) < 1e-6 and report.policy_logp_per_token == pytest.approx(
        report.reference_logp_per_token)


def test_kl_and_log_probs_equal_the_full_logits_at_agent_tokens_only(
        tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast,
        toy_trajectories: list[Trajectory]) -> None:
    policy = _moved(tiny_model)
    traj = toy_trajectories[0]
    enc = encode_conversation(tiny_tokenizer, traj.messages, traj.num_prompt_messages, 4096)
    ids = torch.tensor([enc.input_ids])
    kl, p_logp, r_logp = agent_token_kl(policy, tiny_model, ids, torch.ones_like(ids), torch.tensor([enc.agent_mask]))
    want_kl, want_p, want_r = _full_logits_kl(policy, tiny_model, enc.input_ids, enc.agent_mask)
    assert kl.shape == want_kl.shape == (sum(enc.agent_mask[1:]),)
    assert sum(enc.agent_mask) < len(enc.input_ids)  # the prompt and observations are not read
    assert torch.allclose(kl, want_kl, atol=1e-5) and bool((kl > 0).all())
    assert torch.allclose(p_logp, want_p, atol=1e-5) and torch.allclose(r_logp, want_r, atol=1e-5)


def test_drift_report_averages_per_token_and_per_episode(
        tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast,
        toy_trajectories: list[Trajectory]) -> None:
    policy = _moved(tiny_model)
    trajs = toy_trajectories[:3]
    per_episode = [_full_logits_kl(policy, tiny_model, e.input_ids, e.agent_mask) for e in
                   (encode_conversation(tiny_tokenizer, t.messages, t.num_prompt_messages, 4096) for t in trajs)]
    kl = torch.cat([k for k, _, _ in per_episode])
    report = policy_drift(policy, tiny_model, tiny_tokenizer, trajs, max_length=4096)
    assert report.agent_tokens == kl.numel()
    assert report.kl_per_token == pytest.approx(kl.mean().item(), rel=1e-4)
    assert report.kl_per_episode == pytest.approx(kl.sum().item() / 3, rel=1e-4)
    assert report.policy_logp_per_token == pytest.approx(torch.cat([p for _, p, _ in per_episode]).mean().item(),
                                                         rel=1e-4)
    assert report.reference_logp_per_token == pytest.approx(torch.cat([r for _, _, r in per_episode]).mean().item(),
                                                            rel=1e-4)
    # Swapping the models changes the direction of the KL (it is not symmetric).
    assert policy_drift(tiny_model, policy, tiny_tokenizer, trajs, 4096).kl_per_token != pytest.approx(
        report.kl_per_token, rel=1e-3)


def test_no_trajectories_is_a_clear_error(tiny_model: LlamaForCausalLM,
                                           tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ValueError, match="at least one trajectory"):
        policy_drift(tiny_model, tiny_model, tiny_tokenizer, [], max_length=4096)
