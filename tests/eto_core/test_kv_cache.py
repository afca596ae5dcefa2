"""kv_cache helpers: how the decoding loop groups rows for the prefill, and its cache views."""

from __future__ import annotations

import itertools
import random
from typing import Any

import torch
from transformers import LlamaConfig, StaticCache

from eto_core.kv_cache import prefill_groups, row_view, set_length, squeeze_columns


def cost(lengths: list[int], groups: list[tuple[int, int]], call_tokens: int) -> int:
    return sum((hi - lo) * lengths[lo] + call_tokens for lo, hi in groups)


def all_splits(n: int) -> list[list[tuple[int, int]]]:
    splits = []
    for cuts in itertools.product((False, True), repeat=n - 1):
        bounds = [0, *[i + 1 for i, c in enumerate(cuts) if c], n]
        splits.append(list(itertools.pairwise(bounds)))
    return splits


def test_prefill_groups_is_the_cheapest_contiguous_split() -> None:
    rng = random.Random(0)
    for _ in range(60):
        n = rng.randint(1, 8)
        lengths = sorted((rng.randint(1, 80) for _ in range(n)), reverse=True)
        call_tokens = rng.choice([0, 5, 24, 200])
        groups = prefill_groups(lengths, call_tokens)
        # Contiguous and covering every row once, in order.
        assert [lo for lo, _ in groups] == [0, *[hi for _, hi in groups[:-1]]] and groups[-1][1] == n
        assert cost(lengths, groups, call_tokens) == min(cost(lengths, s, call_tokens) for s in all_splits(n))


def test_prefill_groups_extremes() -> None:
    lengths = [72, 70, 45, 44, 17, 17, 17]
    assert prefill_groups(lengths, 10**9) == [(0, 7)]  # a forward costs more than any padding
    assert prefill_groups(lengths, 0) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 7)]  # padding costs; equal rows share
    assert prefill_groups(lengths, 24) == [(0, 2), (2, 4), (4, 7)]


def test_a_row_view_writes_into_the_batch_cache_and_set_length_moves_it_on() -> None:
    config = LlamaConfig(hidden_size=16, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2,
                         intermediate_size=32, vocab_size=50)
    cache = StaticCache(config=config, max_cache_len=10)
    cache.early_initialization(4, 1, 8, torch.float32, torch.device("cpu"))
    view = row_view(cache, 1, 3, 5)
    keys = torch.ones(2, 1, 2, 8)
    for layer in range(2):
        view.update(keys * (layer + 1), -keys, layer)
    assert int(view.get_seq_length()) == 7 and int(cache.get_seq_length()) == 0
    layers: Any = cache.layers  # static layers: keys/values are tensors
    for layer in range(2):
        written = layers[layer].keys
        assert torch.equal(written[1:3, :, 5:7], keys * (layer + 1))  # rows 1-2, columns 5-6
        assert not written[[0, 3]].any() and not written[1:3, :, :5].any() and not written[1:3, :, 7:].any()
        assert torch.equal(layers[layer].values[1:3, :, 5:7], -keys)
    set_length(cache, 7)
    assert int(cache.get_seq_length()) == 7


def test_squeeze_moves_each_rows_unmasked_columns_left_in_order() -> None:
    config = LlamaConfig(hidden_size=16, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2,
                         intermediate_size=32, vocab_size=50)
    cache = StaticCache(config=config, max_cache_len=12)
    cache.early_initialization(2, 1, 8, torch.float32, torch.device("cpu"))
    layers: Any = cache.layers
    for layer in layers:
        # Column j of row r holds the value 100 r + j, so every move shows.
        filled = (torch.arange(12.0) + 100 * torch.arange(2.0)[:, None])[:, None, :, None].expand(2, 1, 12, 8)
        layer.keys.copy_(filled)
        layer.values.copy_(-filled)
    set_length(cache, 9)
    mask = torch.tensor([[1, 1, 1, 1, 0, 1, 0, 0, 1],
                         [0, 1, 1, 1, 1, 1, 1, 0, 0]])
    squeezed = squeeze_columns(cache, mask, start=3)
    # From column 3 on: row 0 keeps 3, 5, 8; row 1 keeps 3, 4, 5, 6 (the longest: 4 columns).
    assert squeezed.tolist() == [[1, 1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1]]
    assert int(cache.get_seq_length()) == 7
    for layer in layers:
        assert layer.keys[0, 0, :6, 0].tolist() == [0, 1, 2, 3, 5, 8]
        assert layer.keys[1, 0, :7, 0].tolist() == [100, 101, 102, 103, 104, 105, 106]
        assert layer.values[0, 0, :6, 0].tolist() == [0, -1, -2, -3, -5, -8]
