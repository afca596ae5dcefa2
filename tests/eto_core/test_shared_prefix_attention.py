"""Shared-prefix attention: the prefix read once per batch gives the model's own attention."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, StaticCache

from eto_core.shared_prefix_attention import SharedPrefix, shared_prefix, supports


def gqa_model(**overrides: object) -> LlamaForCausalLM:
    """Four query heads over two key/value heads, so the head folding is exercised."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa", **overrides)
    return LlamaForCausalLM(cfg).eval()


def scored_with_prefix(model: LlamaForCausalLM, ids: torch.Tensor, mask: torch.Tensor, p: int
                       ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The plain model's logits over the padded batch, and the keys/values of its shared first ``p`` tokens."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        reference = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        prefix_cache = DynamicCache(config=model.config)
        model(input_ids=ids[:1, :p], use_cache=True, cache=prefix_cache)
    return reference, [(layer.keys, layer.values) for layer in prefix_cache.layers]


def test_split_attention_equals_sdpa_on_a_padded_batch_in_prefill_and_decode() -> None:
    model = gqa_model()
    p = 7
    ids = torch.randint(0, 100, (3, 20))
    ids[:, :p] = ids[0, :p]
    mask = torch.ones_like(ids)
    mask[1, p : p + 3] = 0  # padding between the prefix and each row's own tokens
    mask[2, p : p + 5] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    reference, layers = scored_with_prefix(model, ids, mask, p)
    with torch.inference_mode():
        cache = StaticCache(config=model.config, max_cache_len=21)
        for layer in cache.layers:  # the prefix columns stay empty: zeros
            layer.update(torch.zeros(3, 2, p, 8), torch.zeros(3, 2, p, 8))
        with shared_prefix(model, SharedPrefix(p, layers)):
            assert model.config._attn_implementation != "sdpa"
            prefill = model(input_ids=ids[:, p:], attention_mask=mask, position_ids=positions[:, p:],
                            cache=cache, use_cache=True).logits
            # One decoding step: a single query per row.
            step = prefill[:, -1].argmax(-1, keepdim=True)
            grown = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], dim=1)
            decoded = model(input_ids=step, attention_mask=grown, position_ids=positions[:, -1:] + 1,
                            cache=cache, use_cache=True).logits
        assert model.config._attn_implementation == "sdpa"  # restored on leaving
        full = model(input_ids=torch.cat([ids, step], 1), attention_mask=grown,
                     position_ids=torch.cat([positions, positions[:, -1:] + 1], 1)).logits
    real = mask[:, p:].bool()
    assert torch.allclose(prefill[real], reference[:, p:][real], atol=1e-5)
    assert torch.allclose(decoded[:, -1], full[:, -1], atol=1e-5)
    # The prefix really came from the shared tensors: other tensors give other logits.
    with torch.inference_mode(), shared_prefix(model, SharedPrefix(p, [(k + 1, v) for k, v in layers])):
        cache = StaticCache(config=model.config, max_cache_len=21)
        for layer in cache.layers:
            layer.update(torch.zeros(3, 2, p, 8), torch.zeros(3, 2, p, 8))
        other = model(input_ids=ids[:, p:], attention_mask=mask, position_ids=positions[:, p:],
                      cache=cache, use_cache=True).logits
    assert not torch.allclose(other[real], reference[:, p:][real], atol=1e-3)


def test_supports_plain_causal_attention_only() -> None:
    assert supports(gqa_model())
    assert not supports(gqa_model(sliding_window=4))
    eager = gqa_model()
    eager.set_attn_implementation("eager")
    assert supports(eager)


def test_bfloat16_is_refused_rather_than_computed_another_way() -> None:
    model = gqa_model().to(torch.bfloat16)
    layers = [(torch.zeros(1, 2, 3, 8, dtype=torch.bfloat16),) * 2 for _ in range(2)]
    with torch.inference_mode(), shared_prefix(model, SharedPrefix(3, layers)), \
            pytest.raises(RuntimeError, match="shared_prefix_attention: false"):
        model(input_ids=torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 4, dtype=torch.long))


def test_overlapping_blocks_on_one_model_from_two_threads_keep_their_prefix() -> None:
    """Rollout shards on a thread pool share one loaded model. When one thread leaves its block
    while another is still inside, the other must keep attending to its prefix (the model's
    implementation switches back only when the last block leaves); a thread outside any block
    meanwhile gets plain attention."""
    import threading

    model = gqa_model()
    p = 7
    ids = torch.randint(0, 100, (2, 12))
    ids[:, :p] = ids[0, :p]
    mask = torch.ones_like(ids)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    reference, layers = scored_with_prefix(model, ids, mask, p)

    def own_part() -> torch.Tensor:
        cache = StaticCache(config=model.config, max_cache_len=12)
        for layer in cache.layers:  # the prefix columns stay empty: zeros
            layer.update(torch.zeros(2, 2, p, 8), torch.zeros(2, 2, p, 8))
        return model(input_ids=ids[:, p:], attention_mask=mask, position_ids=positions[:, p:], cache=cache,
                     use_cache=True).logits

    a_inside, a_left = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def thread_a() -> None:
        try:
            with torch.inference_mode(), shared_prefix(model, SharedPrefix(p, layers)):
                a_inside.set()
                assert b_inside.wait(10)
        except BaseException as exc:  # noqa: BLE001  # reported by the main thread
            errors.append(exc)
        finally:
            a_inside.set()
            a_left.set()

    b_inside = threading.Event()
    a = threading.Thread(target=thread_a)
    a.start()
    assert a_inside.wait(10)
    with torch.inference_mode(), shared_prefix(model, SharedPrefix(p, layers)):
        b_inside.set()
        assert a_left.wait(10)
        a.join(10)
        inside = own_part()  # A has left; this block is still open
        outside: list[torch.Tensor] = []
        plain = threading.Thread(target=lambda: outside.append(
            model(input_ids=ids, attention_mask=mask, position_ids=positions).logits))
        with torch.inference_mode():
            plain.start()
            plain.join(10)
    assert not errors
    assert torch.allclose(inside, reference[:, p:], atol=1e-5)
    assert outside and torch.allclose(outside[0], reference, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # restored when the last block left
