"""Training on sequences that open with the same prompt: run the shared prefix once, exactly.

Every ETO trajectory opens with the same system prompt, instruction and one-shot example (821
of a tidy trajectory's ~1,450 SmolLM2 tokens). A batch that runs each row whole runs that
prefix once per row, forward and backward. Here it runs once per batch:

1. the prefix goes through the model once, keeping its graph (``SharedPrefixGraph``);
2. each row runs on its own after *detached* copies of the prefix's keys/values (``cache()``),
   so its backward stops at those copies and adds their gradient to them;
3. one backward through the prefix (``backward()``) carries the rows' summed gradient.

The result is the gradient of running the prefix in every row (the chain rule sums over the
rows that read it), up to float rounding; tests/eto_core/test_sft.py checks the trained weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache


def shared_length(rows: Sequence[torch.Tensor], agent_masks: Sequence[torch.Tensor]) -> int:
    """How many leading tokens every row shares, cut so that in every row at least one token
    follows and the first token after the prefix is no agent token (a cached prefix leaves no
    hidden state to score it from)."""
    limit = min(len(r) for r in rows) - 1
    for mask in agent_masks:
        marked = torch.nonzero(mask).flatten()
        if marked.numel():
            limit = min(limit, int(marked[0]) - 1)
    if limit <= 0:
        return 0
    first = rows[0][:limit]
    same = torch.stack([r[:limit] == first for r in rows]).all(0)
    differ = torch.nonzero(~same).flatten()
    return int(differ[0]) if differ.numel() else limit


def _cache_of(output: Any) -> Any:
    return output["cache"] if "cache" in output else output["past_key_values"]  # renamed in transformers 5.x


class SharedPrefixGraph:
    """The prefix ``ids`` [1, n] run once through ``model`` (with its graph when gradients are on)."""

    def __init__(self, model: torch.nn.Module, ids: torch.Tensor) -> None:
        self.length = ids.shape[1]
        self.config = getattr(model, "config", None)
        # logits_to_keep=1: the prefix's logits score nothing; only its keys/values are used.
        cache = _cache_of(model(input_ids=ids, use_cache=True, logits_to_keep=1))
        self._graph = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in self._graph)
        self._leaves = [t.detach().requires_grad_(grad) for t in self._graph]

    def cache(self) -> DynamicCache:
        """A fresh cache holding the prefix, for one row's forward (which appends to it)."""
        cache = DynamicCache(config=self.config)
        for layer in range(len(self._leaves) // 2):
            cache.update(self._leaves[2 * layer], self._leaves[2 * layer + 1], layer)
        return cache

    def positions(self, length: int, device: torch.device) -> torch.Tensor:
        """Position ids [1, length - prefix] of a row's tokens after the prefix."""
        return torch.arange(self.length, length, device=device)[None]

    def backward(self) -> None:
        """Carry the gradient the rows left on the prefix's keys/values through the prefix."""
        pairs = [(t, leaf.grad) for t, leaf in zip(self._graph, self._leaves, strict=True) if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])


def begin_step(trainer: Any, model: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """What ``transformers.Trainer.training_step`` does before its forward, for a trainer's own
    shared-prefix step: train mode (the optimizer's too, where it has one) and the inputs on the
    trainer's device."""
    model.train()
    optimizer_train = getattr(trainer.optimizer, "train", None)  # schedule-free optimizers have modes
    if callable(optimizer_train):
        optimizer_train()
    prepared: dict[str, Any] = trainer._prepare_inputs(inputs)
    return prepared
