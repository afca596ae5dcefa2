"""Seeded token sampling that does not depend on which rows share a batch.

Each row of a generation call draws from its own generator, seeded from the settings' seed,
the policy's call count and the row's place in the caller's batch. A row's k-th token then
uses the row's k-th draw whoever else is in the batch, whether finished rows leave it (our
decoding loop) or stay in it (HF ``generate``), so both engines sample the same tokens from
the same logits.

A draw is Gumbel-max: adding independent Gumbel(0, 1) noise to the log-probabilities and
taking the argmax samples exactly from their softmax, and one uniform vector per row and step
is all the randomness it needs.
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

    def __init__(self, seed: int, call: int, rows: int, temperature: float, top_p: float) -> None:
        if temperature <= 0:
            raise ValueError(f"sampling needs a temperature above 0, got {temperature}")
        self.temperature = temperature
        self.top_p = top_p
        self.seeds = [row_seed(seed, call, row) for row in range(rows)]
        self.generators: list[torch.Generator] = []

    def pick(self, logits: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """The sampled token of each batch row (``logits[i]`` belongs to caller row ``rows[i]``)."""
        if not self.generators:
            # On the logits' device, so a GPU's draws are not made on the CPU and copied every step
            # (a device's stream differs from the CPU's: the same seed samples other tokens there).
            self.generators = [torch.Generator(device=logits.device).manual_seed(s) for s in self.seeds]
        uniform = torch.stack([torch.rand(logits.shape[-1], generator=self.generators[r], device=logits.device)
                               for r in rows])
        # -log(-log(u)) is Gumbel(0, 1); u = 0 gives -inf noise (never picked), which is harmless.
        gumbel = -torch.log(-torch.log(uniform))
        return (warp(logits, self.temperature, self.top_p) + gumbel).argmax(-1)


class SampledTokenProcessor(LogitsProcessor):
    """Makes HF ``generate`` (greedy mode) take ``RowSampler``'s token: every other token's score
    becomes -inf, so the argmax is the sampled one."""

    def __init__(self, sampler: RowSampler) -> None:
        self.sampler = sampler

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        token = self.sampler.pick(scores, range(scores.shape[0]))
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(-1, token[:, None], 0.0)  # type: ignore[return-value]
