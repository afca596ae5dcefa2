"""The shared prompt prefix run once (eto_core/prefix_sharing.py): where it ends, and that its
gradient equals running it in every row."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eto_core.prefix_sharing import SharedPrefixGraph, shared_length


def test_shared_length_stops_where_rows_part_and_before_an_agent_token() -> None:
    rows = [torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([1, 2, 3, 4, 9, 9])]
    none = [torch.zeros(6, dtype=torch.long)] * 2
    assert shared_length(rows, none) == 4  # where the rows part
    agent = [torch.zeros(6, dtype=torch.long), torch.tensor([0, 0, 0, 1, 1, 0])]
    assert shared_length(rows, agent) == 2  # token 3 opens an agent turn: it must follow the prefix
    assert shared_length([rows[0], rows[0][:3]], none) == 2  # every row keeps a token after it
    assert shared_length([rows[0], rows[0]], none) == 5
    assert shared_length([torch.tensor([7]), torch.tensor([7, 8])], none) == 0


def test_rows_after_a_shared_prefix_get_the_gradient_of_whole_rows() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    prefix = torch.randint(0, 50, (1, 7))
    tails = [torch.randint(0, 50, (1, n)) for n in (3, 6)]

    def loss_of(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])

    whole = sum(loss_of(model(input_ids=torch.cat([prefix, t], 1)).logits[:, 7:], torch.cat([prefix, t], 1)[:, 7:])
                for t in tails)
    whole.backward()  # type: ignore[union-attr]
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    graph = SharedPrefixGraph(model, prefix)
    total = torch.zeros(())
    for t in tails:
        out = model(input_ids=t, past_key_values=graph.cache(), position_ids=graph.positions(7 + t.shape[1], t.device))
        loss = loss_of(out.logits, t)
        loss.backward()
        total = total + loss.detach()
    torch.testing.assert_close(total, whole.detach())  # type: ignore[union-attr]
    partial = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    graph.backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    # The prefix's own layers only learn through the keys/values the rows read: before
    # graph.backward() they have no gradient from the prefix's positions, after it they match.
    assert any(not torch.allclose(partial[n], expected[n]) for n in expected)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)
