"""eto_core.sampling: HF's temperature/top-p rule, exact sampling frequencies, per-row streams."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from eto_core.sampling import RowSampler, SampledTokenProcessor, row_seed, warp


def hf_warp(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers(torch.zeros((logits.shape[0], 1), dtype=torch.long), logits.clone())  # type: ignore[arg-type]


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (0.7, 0.9), (1.3, 0.5), (0.5, 0.01)])
def test_warp_keeps_the_tokens_and_weights_hf_sampling_keeps(temperature: float, top_p: float) -> None:
    logits = torch.randn((6, 300), generator=torch.Generator().manual_seed(0)) * 3
    ours, theirs = warp(logits, temperature, top_p), hf_warp(logits, temperature, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert torch.allclose(ours.softmax(-1), theirs.softmax(-1), atol=1e-6)
    if top_p < 0.02:  # a nucleus that small is the most likely token alone
        assert torch.equal(torch.isfinite(ours).sum(-1), torch.ones(6, dtype=torch.long))


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.6, 0.8)])
def test_draws_follow_the_warped_distribution(temperature: float, top_p: float) -> None:
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.0, -1.0, -3.0]])
    expected = warp(logits, temperature, top_p).softmax(-1)[0]
    draws = 20_000
    sampler = RowSampler(seed=0, call=1, rows=1, temperature=temperature, top_p=top_p)
    counts = torch.bincount(torch.cat([sampler.pick(logits, [0]) for _ in range(draws)]), minlength=6)
    observed = counts.double() / draws
    # 4 standard errors of a binomial frequency: a wrong temperature moves these by 5-20 of them.
    tolerance = 4 * (expected.double() * (1 - expected.double()) / draws).sqrt() + 1e-9
    assert torch.all((observed - expected.double()).abs() <= tolerance), (observed, expected)
    assert torch.all(counts[expected == 0] == 0)  # outside the nucleus: never drawn


def test_a_rows_draws_do_not_depend_on_the_rows_beside_it() -> None:
    logits = torch.randn((3, 50), generator=torch.Generator().manual_seed(1))
    together = RowSampler(seed=4, call=2, rows=3, temperature=1.0, top_p=1.0)
    alone = RowSampler(seed=4, call=2, rows=3, temperature=1.0, top_p=1.0)
    both = [together.pick(logits, [0, 1, 2]) for _ in range(20)]
    # Row 1 by itself (rows 0 and 2 have left the batch) draws what it drew among the others.
    solo = [alone.pick(logits[1:2], [1]) for _ in range(20)]
    assert [int(b[1]) for b in both] == [int(s[0]) for s in solo]
    # Rows with the same logits draw different tokens: each row has its own stream.
    same = logits[:1].expand(3, -1)
    streams = torch.stack([together.pick(same, [0, 1, 2]) for _ in range(30)])
    assert not torch.equal(streams[:, 0], streams[:, 1])


def test_seeds_differ_by_seed_call_and_row() -> None:
    seeds = {row_seed(s, c, r) for s in range(3) for c in range(3) for r in range(3)}
    assert len(seeds) == 27 and all(0 <= x < 2**63 for x in seeds)


def test_the_processor_leaves_only_the_sampled_token() -> None:
    logits = torch.randn((2, 40), generator=torch.Generator().manual_seed(2))
    scores = SampledTokenProcessor(RowSampler(1, 1, 2, 0.9, 0.95))(torch.zeros((2, 1), dtype=torch.long), logits)  # type: ignore[arg-type]
    expected = RowSampler(1, 1, 2, 0.9, 0.95).pick(logits, [0, 1])
    assert torch.equal(scores.argmax(-1), expected)
    assert torch.isfinite(scores).sum().item() == 2


def test_sampling_needs_a_positive_temperature() -> None:
    with pytest.raises(ValueError, match="temperature above 0"):
        RowSampler(0, 0, 1, 0.0, 1.0)


class FixedDraws(RowSampler):
    """A sampler whose draws are given: the extremes of [0, 1) that rounding could push astray."""

    def __init__(self, draws: list[float], temperature: float = 1.0, top_p: float = 1.0) -> None:
        super().__init__(0, 0, len(draws), temperature, top_p)
        self.draws = torch.tensor(draws, dtype=torch.float64)

    def uniforms(self, rows: Sequence[int], device: torch.device) -> torch.Tensor:
        return self.draws[list(rows)]


def test_the_extreme_draws_land_on_tokens_with_mass() -> None:
    """u = 0 picks the first token with mass, u just below 1 the last; zero-mass tokens (outside
    the nucleus, or the padding of the last block) are never picked, even at the block edges."""
    vocab = 300  # not a whole number of blocks
    logits = torch.full((4, vocab), -1e9)
    logits[0, [3, 200]] = 0.0  # mass in two blocks, none at the ends
    logits[1, 255:257] = 0.0  # mass on both sides of the first block edge
    logits[2, -1] = 0.0  # only the last token
    logits[3] = torch.linspace(0, 1, vocab)  # everywhere, top-p cuts the low end
    last = float(torch.nextafter(torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)))
    for top_p in (1.0, 0.5):
        kept = warp(logits, 1.0, top_p) > -1e8
        first = FixedDraws([0.0] * 4, top_p=top_p).pick(logits, range(4))
        end = FixedDraws([last] * 4, top_p=top_p).pick(logits, range(4))
        for picks in (first, end):
            assert all(bool(kept[row, int(token)]) for row, token in enumerate(picks)), picks
        # The lowest and the highest token with mass in each row.
        ids = [torch.nonzero(kept[row]).flatten() for row in range(4)]
        assert first.tolist() == [int(i[0]) for i in ids] and end.tolist() == [int(i[-1]) for i in ids]
    assert ids[2].tolist() == [vocab - 1] and 0 < len(ids[3]) < vocab  # top-p 0.5 did cut row 3
