"""The rollout engine's key/value cache: what later ``generate`` calls start from.

An episode's next prompt is its last prompt + its turn + the new observation, and every
episode of a batch starts with the same instruction + one-shot example. ``KVCache`` keeps both
(per-episode rows and batch-wide shared prefixes) so a decoding step encodes only new tokens;
``LocalHFPolicy`` (eto_core/policy.py) looks rows up here and assembles the batch's cache.
"""

from __future__ import annotations

import copy
import inspect
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import (
    DynamicCache,
    PreTrainedModel,
    StaticCache,
)

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]
"""One sequence's keys and values per layer, each [1, kv_heads, tokens, head_dim]."""


@dataclass(frozen=True)
class CacheEntry:
    """Keys/values of a token sequence: its first ``base_len`` tokens from ``base`` (a shared
    prefix's tensors, referenced rather than copied), the rest from ``own``."""

    tokens: np.ndarray
    own: LayerKV
    base: LayerKV | None = None
    base_len: int = 0

    def copy_into(self, layer: int, keys: torch.Tensor, values: torch.Tensor, row: int, lo: int, hi: int,
                  column: int) -> None:
        """Copy tokens [lo, hi)'s keys/values into row ``row`` of the batch tensors from ``column`` on."""
        if lo < self.base_len and self.base is not None:
            end = min(hi, self.base_len)
            keys[row, :, column : column + end - lo] = self.base[layer][0][0, :, lo:end]
            values[row, :, column : column + end - lo] = self.base[layer][1][0, :, lo:end]
            column, lo = column + end - lo, end
        if lo < hi:
            a, b = lo - self.base_len, hi - self.base_len
            keys[row, :, column : column + hi - lo] = self.own[layer][0][0, :, a:b]
            values[row, :, column : column + hi - lo] = self.own[layer][1][0, :, a:b]


RowStart = tuple[int, CacheEntry | None]
"""A row's start: how many of its leading tokens come from a cache entry, and the entry."""


class KVCache:
    """Keys/values that later ``generate`` calls start from instead of re-encoding tokens.

    Two sources, looked up per row by the longest common token prefix:
    - ``shared``: prefixes that whole batches share (the instruction + one-shot example), often
      most of a prompt. A batch of two or more rows without a better start caches its common
      prefix (a lone row's "common prefix" is its whole prompt, which is never seen again).
    - ``rows`` (``episodes``): each row's own tokens after a call, its turn included. An
      episode's next conversation is that plus the observation, so the next step encodes only
      the new tokens instead of the whole history. An entry is used once (the episode moves
      on) and the oldest unused ones are dropped, so finished episodes free their memory. A row
      that attended to a shared prefix keeps only its tokens after it and refers to the prefix.
    The match is on token ids, so whatever the conversation is, the start is exact; a row
    always keeps at least one token to encode.
    """

    MIN_TOKENS = 16
    """Shorter shared prefixes are not worth a cache entry."""

    def __init__(self, model: PreTrainedModel, *, shared: bool = True, episodes: bool = True,
                 size: int = 4, row_entries: int = 64) -> None:
        self.model = model
        self.use_shared = shared
        self.episodes = episodes
        self.size = size
        self.row_entries = row_entries
        self.entries: OrderedDict[tuple[int, ...], CacheEntry] = OrderedDict()
        """The shared prefixes."""
        self.rows: OrderedDict[tuple[int, ...], CacheEntry] = OrderedDict()
        params = inspect.signature(model.forward).parameters
        # transformers renamed past_key_values to cache during 5.x; use whichever this one takes.
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.hits = 0
        """Batches that started from a shared prefix."""
        self.misses = 0
        """Shared prefixes encoded."""
        self.row_hits = 0
        """Rows that started from their own episode's cache."""

    def lookup(self, batch: list[list[int]]) -> list[RowStart]:
        """Per row: how many of its leading tokens come from a cache, and that cache."""
        starts: list[RowStart] = []
        used_shared = False
        for ids in batch:
            best, best_entry, best_key = 0, None, None
            if self.episodes and self.rows:
                arr = np.asarray(ids)
                for key, entry in self.rows.items():
                    n = common_length(entry.tokens, arr)
                    if n > best:
                        best, best_entry, best_key = n, entry, key
            own = best_key is not None
            for prefix, entry in self.entries.items():
                if len(prefix) > best and len(prefix) < len(ids) and tuple(ids[: len(prefix)]) == prefix:
                    best, best_entry, own = len(prefix), entry, False
            best = min(best, len(ids) - 1)
            if best <= 0:
                starts.append((0, None))
                continue
            if own:
                self.rows.pop(best_key)  # type: ignore[arg-type]  # the episode moves on: used once
                self.row_hits += 1
            else:
                used_shared = True
            starts.append((best, best_entry))
        if used_shared:
            self.hits += 1
        if self.use_shared and len(batch) > 1 and sum(c == 0 for c, _ in starts) >= 2:
            fresh = [ids for ids, (c, _) in zip(batch, starts, strict=True) if c == 0]
            common = common_prefix_tokens(fresh)[: min(len(ids) for ids in fresh) - 1]
            if len(common) >= self.MIN_TOKENS:
                self.misses += 1
                self.entries[common] = CacheEntry(np.asarray(common), self._encode(common))
                while len(self.entries) > self.size:
                    self.entries.popitem(last=False)
                starts = [(len(common), self.entries[common]) if c == 0 else (c, e)
                          for ids, (c, e) in zip(batch, starts, strict=True)]
        return starts

    def common_prefix(self, batch: list[list[int]], starts: list[RowStart]) -> CacheEntry | None:
        """The longest shared entry that opens every row of a batch of two or more (each row
        with at least one token after it, and no row's start ending inside it), if any."""
        if len(batch) < 2:
            return None
        best: CacheEntry | None = None
        for prefix, entry in self.entries.items():
            n = len(prefix)
            if best is not None and n <= len(best.tokens):
                continue
            if all(len(ids) > n and tuple(ids[:n]) == prefix for ids in batch):
                best = entry
        return best

    def _encode(self, prefix: tuple[int, ...]) -> LayerKV:
        ids = torch.tensor([prefix], dtype=torch.long, device=self.model.device)
        cache = DynamicCache(config=self.model.config)
        self.model.eval()
        with torch.inference_mode():
            self.model(input_ids=ids, use_cache=True, **{self.cache_kwarg: cache})
        return layer_kv(cache)

    def batch_cache(self, starts: list[RowStart], width: int, device: torch.device, max_len: int,
                    skip: int = 0) -> Any:
        """One cache for the batch, room for ``max_len`` tokens: row i's cached tokens skip..c_i
        right-aligned in columns skip..``width``, zeros (masked out, or for the first ``skip``
        columns read from the shared prefix instead) elsewhere.

        A static (preallocated) cache: a dynamic one concatenates every layer's whole cache
        for each new token, which costs more than the decoding step itself at long contexts."""
        cache = StaticCache(config=self.model.config, max_cache_len=max_len)
        # Allocated now (zeros) rather than on the first write, so that row_view can slice it and
        # the rows' cached tokens go straight into it: building a width-wide copy first and
        # handing it to update() would zero-fill and copy each layer's history once more, a
        # cost that grows with the episode (ALFWorld, docs/benchmarks.md).
        config = self.model.config.get_text_config()
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        with torch.inference_mode():
            cache.early_initialization(len(starts), kv_heads, head_dim, self.model.dtype, device)
            if width == 0:
                return cache
            for layer, static in enumerate(cache.layers):
                keys: torch.Tensor = static.keys  # type: ignore[union-attr,assignment]  # a StaticLayer's, allocated
                values: torch.Tensor = static.values  # type: ignore[union-attr,assignment]
                for row, (c, entry) in enumerate(starts):
                    if entry is not None and c > skip:
                        entry.copy_into(layer, keys, values, row, skip, c, width - (c - skip))
            set_length(cache, width)
        return cache

    def keep_rows(self, batch: list[list[int]], starts: list[RowStart], kept: list[list[int]], cache: Any,
                  cached: int, suffix: int, shared: CacheEntry | None = None) -> None:
        """After an HF ``generate``: store each row's keys/values for its tokens and the turn it
        wrote (row i's cached tokens end at column ``cached``, its prompt at ``cached + suffix``)."""
        if cache is None:
            return
        layers = layer_kv(cache)
        for row, (ids, (c, _), new) in enumerate(zip(batch, starts, kept, strict=True)):
            self.keep_row(ids, c, new, layers, row, cached, cached + suffix, shared)

    def keep_row(self, ids: list[int], c: int, new: list[int], layers: LayerKV, row: int, cached_end: int,
                 prompt_end: int, shared: CacheEntry | None, turn_columns: list[int] | None = None) -> None:
        """Store one row's keys/values: its cached tokens (after any ``shared`` prefix, whose
        columns the batch cache does not hold and which the entry refers to) right-aligned to
        column ``cached_end``, the rest of its prompt to ``prompt_end``, then the turn it wrote,
        in the columns after it or, where rejected draft tokens left columns between the turn's,
        in ``turn_columns``. The last token a row generated was never fed back, so it has none
        and stays out."""
        p = len(shared.tokens) if shared is not None else 0
        written = max(len(new) - 1, 0)
        turn = turn_columns[:written] if turn_columns is not None else list(range(prompt_end, prompt_end + written))
        columns = (list(range(cached_end - (c - p), cached_end))
                   + list(range(prompt_end - (len(ids) - c), prompt_end))
                   + turn)
        if not columns or columns[-1] >= layers[0][0].shape[2]:
            return
        with torch.inference_mode():
            index = torch.tensor(columns, device=layers[0][0].device)
            tokens = np.asarray([*ids, *new[:written]])
            own = [(k[row : row + 1].index_select(2, index), v[row : row + 1].index_select(2, index))
                   for k, v in layers]
        self.rows[tuple(tokens.tolist())] = CacheEntry(tokens, own, shared.own if shared else None, p)
        while len(self.rows) > self.row_entries:
            self.rows.popitem(last=False)


def row_view(cache: Any, lo: int, hi: int, length: int) -> Any:
    """Rows ``lo``..``hi`` of an allocated static batch cache as a cache of their own, its next
    token written at column ``length``: its tensors are views, so a forward on those rows
    writes their keys/values into the batch's cache."""
    view = copy.copy(cache)
    view.layers = []
    for layer in cache.layers:
        part = copy.copy(layer)
        part.keys, part.values = layer.keys[lo:hi], layer.values[lo:hi]
        part.batch_size = hi - lo
        # update() advances the length in place: the view needs its own.
        part.cumulative_length = torch.tensor(length, dtype=layer.cumulative_length.dtype,
                                              device=layer.cumulative_length.device)
        view.layers.append(part)
    return view


def set_length(cache: Any, length: int) -> None:
    """Where a static cache writes its next token (after its rows were filled through views)."""
    for layer in cache.layers:
        layer.cumulative_length.fill_(length)


def squeeze_columns(cache: Any, mask: torch.Tensor, start: int) -> torch.Tensor:
    """Move each row's unmasked columns from ``start`` on to the left, in order, and cut the
    cache's length to the longest row's: the masked columns that rejected draft tokens left
    are dropped. Positions are given explicitly, so a token's column need not match its
    position. Returns the mask of the squeezed cache."""
    length = mask.shape[1]
    region = mask[:, start:]
    index = torch.sort(region, dim=1, descending=True, stable=True).indices
    keep = int(region.sum(1).max().item())
    index = index[:, :keep]
    with torch.inference_mode():
        for layer in cache.layers:
            for tensor in (layer.keys, layer.values):
                moved = tensor[:, :, start:length].gather(
                    2, index[:, None, :, None].expand(-1, tensor.shape[1], -1, tensor.shape[3]))
                tensor[:, :, start : start + keep] = moved
    set_length(cache, start + keep)
    return torch.cat([mask[:, :start], region.gather(1, index)], dim=1)


def prefill_groups(lengths: list[int], call_tokens: int) -> list[tuple[int, int]]:
    """Split rows sorted by length, longest first, into contiguous groups, each run as one
    forward padded to its first (longest) row: the split with the fewest padded tokens plus
    ``call_tokens`` per forward (what a forward's fixed cost is worth in prompt tokens)."""
    n = len(lengths)
    best = [0] * (n + 1)  # best[end]: the cheapest split of rows 0..end
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        best[end], cut[end] = min((best[a] + (end - a) * lengths[a] + call_tokens, a) for a in range(end))
    groups: list[tuple[int, int]] = []
    end = n
    while end > 0:
        groups.append((cut[end], end))
        end = cut[end]
    return groups[::-1]


def layer_kv(cache: Any) -> LayerKV:
    """Per layer (keys, values) of a filled DynamicCache."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def common_length(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two token arrays (vectorised: entries run to thousands)."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


def common_prefix_tokens(batch: list[list[int]]) -> tuple[int, ...]:
    first = batch[0]
    n = min(len(ids) for ids in batch)
    for i in range(n):
        token = first[i]
        if any(ids[i] != token for ids in batch):
            return tuple(first[:i])
    return tuple(first[:n])
