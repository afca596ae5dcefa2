"""Seeded token sampling that does not depend on which rows share a batch.

Each row of a generation call draws from its own generator, seeded from the settings' seed,
the policy's call count and the row's place in the caller's batch. A row's k-th token then
uses the row's k-th draw whoever else is in the batch, whether finished rows leave it (our
decoding loop) or stay in it (HF ``generate``), so both engines sample the same tokens from
the same logits.

A draw is one uniform number per row and step, turned into a token by the inverse of the
distribution's cumulative sum (in float64): first over blocks of the vocabulary, then within
the block it falls in, which costs a fifth of a cumulative sum over the whole vocabulary
(or of Gumbel noise for every token).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor


def row_seed(seed: int, call: int, row: int) -> int:
    """A 63-bit seed for one row of one call (distinct for every (seed, call, row))."""
    digest = hashlib.sha256(f"{seed}:{call}:{row}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def warp(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-weights to sample from: logits over the temperature, the tokens outside the nucleus
    at -inf. The nucleus is the smallest set of most likely tokens holding ``top_p`` of the
    mass (HF's ``TopPLogitsWarper`` rule: drop the least likely while the dropped mass stays
    at most 1 - top_p; the most likely token always stays)."""
    scaled = logits.float() / temperature
    if top_p >= 1.0:
        return scaled
    ascending, index = scaled.sort(dim=-1)
    dropped = ascending.softmax(-1).cumsum(-1) <= 1.0 - top_p
    dropped[..., -1] = False
    return scaled.masked_fill(dropped.scatter(-1, index, dropped), float("-inf"))


class RowSampler:
    """Samples the next token of each row with temperature and top-p, every row from its own
    seeded generator (see the module's docstring)."""

    BLOCK = 256
    """Vocabulary entries per block of the two-level inverse-CDF draw."""

    def __init__(self, seed: int, call: int, rows: int, temperature: float, top_p: float) -> None:
        if temperature <= 0:
            raise ValueError(f"sampling needs a temperature above 0, got {temperature}")
        self.temperature = temperature
        self.top_p = top_p
        self.seeds = [row_seed(seed, call, row) for row in range(rows)]
        self.generators: list[torch.Generator] = []

    def uniforms(self, rows: Sequence[int], device: torch.device) -> torch.Tensor:
        """The next draw in [0, 1) of each row's stream (float64)."""
        if not self.generators:
            # On the logits' device, so a GPU's draws are not made on the CPU and copied every step
            # (a device's stream differs from the CPU's: the same seed samples other tokens there).
            self.generators = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]
        return torch.cat([torch.rand(1, generator=self.generators[r], device=device, dtype=torch.float64)
                          for r in rows])

    def pick(self, logits: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """The sampled token of each batch row (``logits[i]`` belongs to caller row ``rows[i]``)."""
        weights = warp(logits, self.temperature, self.top_p)
        n, vocab = weights.shape
        # Unnormalised probabilities (tokens outside the nucleus: 0), padded to whole blocks.
        mass = (weights - weights.max(-1, keepdim=True).values).exp()
        blocks = -(-vocab // self.BLOCK)
        mass = torch.nn.functional.pad(mass, (0, blocks * self.BLOCK - vocab)).view(n, blocks, self.BLOCK)
        cumulative = mass.sum(-1, dtype=torch.float64).cumsum(-1)
        total = cumulative[:, -1]
        # A target strictly below the total, so the block (and token) found has mass; right=True
        # skips zero-mass entries, whose cumulative sum equals the one before.
        below = torch.nextafter(total, torch.zeros_like(total))
        target = torch.minimum(self.uniforms(rows, weights.device) * total, below)
        block = torch.searchsorted(cumulative, target[:, None], right=True).squeeze(1)
        start = torch.where(block > 0, cumulative.gather(1, (block - 1).clamp(min=0)[:, None]).squeeze(1),
                            torch.zeros_like(target))
        inner = mass[torch.arange(n, device=weights.device), block].double().cumsum(-1)
        # The block's own running sum may round differently from its total above: stay below it.
        rest = torch.minimum(target - start, torch.nextafter(inner[:, -1], torch.zeros_like(target)))
        within = torch.searchsorted(inner, rest[:, None], right=True).squeeze(1)
        return block * self.BLOCK + within


class SampledTokenProcessor(LogitsProcessor):
    """Makes HF ``generate`` (greedy mode) take ``RowSampler``'s token: every other token's score
    becomes -inf, so the argmax is the sampled one."""

    def __init__(self, sampler: RowSampler) -> None:
        self.sampler = sampler

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        token = self.sampler.pick(scores, range(scores.shape[0]))
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(-1, token[:, None], 0.0)  # type: ignore[return-value]
