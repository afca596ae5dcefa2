"""Attention that reads a prefix every row of a batch shares once per batch, not once per row.

In a rollout every conversation opens with the same instruction and one-shot example, most of
each prompt. Plain batched attention reads those keys/values from every row's cache at every
decoding step, so at batch 16 the shared prefix is read 16 times per token. Here the prefix's
keys/values are held once (``SharedPrefix``) and each layer splits attention in two:

- every query of every row against the shared prefix, as one attention call (the batch folded
  into the query axis, so the prefix is read once);
- each row's query against its own keys after the prefix, with the usual padding/causal mask;

and merges the two with their log-sum-exps, which is exact: softmax over the concatenation.
Grouped-query heads are folded the same way, so no key/value head is ever repeated.

The batch cache keeps ``length`` unused columns at its start for the prefix (so positions and
the attention mask stay the model's own); this function skips them. Outside a
``shared_prefix`` context it is the model's usual SDPA attention.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "eto_shared_prefix"
"""The attention implementation's registered name."""


@dataclass(frozen=True)
class SharedPrefix:
    """The keys/values of the first ``length`` tokens of every row, per layer [1, kv_heads, length, head_dim].

    ``columns``: how many leading columns of the batch cache (and of the attention mask) stand
    for the prefix, unused: ``length`` when the positions come from the mask, as in ``generate``;
    0 when the cache holds only what follows the prefix and positions are given explicitly."""

    length: int
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    columns: int | None = None
    _masks: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False, compare=False)
    """The last (boolean mask, additive mask over the own columns): every layer of one forward
    gets the same mask object, so the additive form is built once per forward, not per layer."""

    def own_mask(self, mask: torch.Tensor, group: int, dtype: torch.dtype) -> torch.Tensor:
        """The additive mask of each row's queries (``group`` query heads folded in) over its own columns."""
        if self._masks and self._masks[0][0] is mask and self._masks[0][1].dtype == dtype:
            return self._masks[0][1]
        row_mask = mask[:, :, :, self.skip :]
        batch, _, q_len, width = row_mask.shape
        if group > 1:
            row_mask = row_mask.unsqueeze(2).expand(batch, 1, group, q_len, width).reshape(batch, 1, group * q_len, width)
        additive = torch.zeros(row_mask.shape, dtype=dtype).masked_fill_(~row_mask, float("-inf"))
        # Holding the mask keeps its id from being reused by a later forward's mask.
        self._masks[:] = [(mask, additive)]
        return additive

    @property
    def skip(self) -> int:
        return self.length if self.columns is None else self.columns


_ACTIVE: ContextVar[SharedPrefix | None] = ContextVar("eto_shared_prefix", default=None)


def supports(model: PreTrainedModel) -> bool:
    """Whether the model's attention is plain causal softmax attention this can split exactly.

    Sliding windows would cut the prefix for late queries, and logit soft-capping is not a
    softmax over raw scores; both would make the split inexact, so such models keep SDPA."""
    config = model.config
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    if getattr(config, "attn_logit_softcapping", None):
        return False
    if getattr(config, "is_encoder_decoder", False):
        return False
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager", NAME)


@contextmanager
def shared_prefix(model: PreTrainedModel, prefix: SharedPrefix) -> Iterator[None]:
    """Within the block, the model attends to ``prefix`` in place of its cache's first ``prefix.length`` columns.

    The prefix is per thread (a context variable), but the attention implementation is the
    model's: rollout shards on a thread pool share one loaded model. So the first block to
    enter switches it to this module's attention and the last to leave switches it back; a
    thread outside any block meanwhile gets plain SDPA from ``attention`` (no prefix set)."""
    _register()
    with _USERS_LOCK:
        count, previous = _USERS.get(id(model), (0, model.config._attn_implementation))
        if count == 0:
            model.set_attn_implementation(NAME)
        _USERS[id(model)] = (count + 1, previous)
    token = _ACTIVE.set(prefix)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        with _USERS_LOCK:
            count, previous = _USERS.pop(id(model))
            if count == 1:
                model.set_attn_implementation(previous)
            else:
                _USERS[id(model)] = (count - 1, previous)


_USERS_LOCK = threading.Lock()

_USERS: dict[int, tuple[int, Any]] = {}
"""Per model (by id) inside a ``shared_prefix`` block: how many blocks, and the implementation
to restore when the last one leaves."""


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    AttentionInterface.register(NAME, attention)
    # Always a boolean [batch, 1, q, kv] mask: the per-row half needs it even where SDPA would
    # take is_causal instead.
    AttentionMaskInterface.register(NAME, _mask)
    _registered = True


def _mask(*args: Any, **kwargs: Any) -> Any:
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def _flash(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
           scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output and per-query log-sum-exp (SDPA's CPU flash kernel returns both)."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, False, attn_mask=mask, scale=scale)
    return out, lse


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """query [B, H, q, d]; key/value [B, kv, L, d] (the batch cache, prefix columns unused); returns [B, q, H, d]."""
    prefix = _ACTIVE.get()
    if prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
        raise RuntimeError("shared-prefix attention cannot split soft-capped or sliding-window attention; "
                           "set policy.shared_prefix_attention: false for this model.")
    if query.device.type != "cpu" or query.dtype not in (torch.float32, torch.float64):
        raise RuntimeError("shared-prefix attention runs on CPU in fp32; set policy.shared_prefix_attention: false.")
    if attention_mask is None or attention_mask.dtype != torch.bool:
        raise RuntimeError("shared-prefix attention needs the boolean mask it registers; got another mask.")
    p = prefix.skip
    shared_k, shared_v = prefix.layers[module.layer_idx]  # type: ignore[index]
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    # Head h reads key/value head h // group: fold the group into the query axis.
    folded = query.reshape(batch, kv_heads, group * q_len, dim)

    # Each row against its own keys after the prefix.
    additive = prefix.own_mask(attention_mask, group, query.dtype)
    # Every real query sees at least itself here. A padding query may see nothing (the kernel
    # then gives output 0, lse 0); its output is never read, as its key is masked for all.
    own_out, own_lse = _flash(folded, key[:, :, p:], value[:, :, p:], additive, scaling)

    # Every query of the batch against the prefix in one call: the prefix is read once.
    stacked = folded.transpose(0, 1).reshape(1, kv_heads, batch * group * q_len, dim)
    pre_out, pre_lse = _flash(stacked, shared_k, shared_v, None, scaling)
    pre_out = pre_out.reshape(kv_heads, batch, group * q_len, dim).transpose(0, 1)
    pre_lse = pre_lse.reshape(kv_heads, batch, group * q_len).transpose(0, 1)

    # softmax over both halves: the prefix's share is exp(pre) / (exp(pre) + exp(own)) =
    # sigmoid(pre - own), so one sigmoid and one lerp instead of logaddexp and two exps.
    weight = torch.sigmoid(pre_lse - own_lse).unsqueeze(-1)
    out = torch.lerp(own_out, pre_out, weight)
    out = out.reshape(batch, heads, q_len, dim).transpose(1, 2).contiguous()
    return out, None
