"""Early stopping and champion choice on constructed score sequences."""

from __future__ import annotations

import pytest

from eto_core.selection import choose_iteration


@pytest.mark.parametrize(
    ("scores", "patience", "best", "stop"),
    [
        ([0.30], 1, 0, False),  # only SFT so far
        ([0.30, 0.42], 1, 1, False),  # improving: go on
        ([0.30, 0.42, 0.45, 0.40], 1, 2, True),  # the paper's shape: peak at 2, then decline
        ([0.30, 0.42, 0.45, 0.40], 2, 2, False),  # more patience: one more try
        ([0.30, 0.42, 0.45, 0.40, 0.38], 2, 2, True),
        ([0.30, 0.25, 0.20], 1, 0, True),  # ETO never beat SFT: SFT stays the champion
        ([0.30, 0.30, 0.30], 1, 0, True),  # a tie is not a gain: the earlier model wins
        ([0.30, 0.20, 0.50], 2, 2, False),  # a dip then a new best resets the count
    ],
)
def test_best_iteration_and_stop(scores: list[float], patience: int, best: int, stop: bool) -> None:
    choice = choose_iteration(scores, patience=patience)
    assert (choice.best_iteration, choice.stop) == (best, stop)
    assert choice.best_score == scores[best]


def test_min_delta_ignores_noise_sized_gains() -> None:
    assert choose_iteration([0.30, 0.305, 0.31], min_delta=0.02).best_iteration == 0
    assert choose_iteration([0.30, 0.305, 0.35], min_delta=0.02).best_iteration == 2


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one score"):
        choose_iteration([])
    with pytest.raises(ValueError, match="patience"):
        choose_iteration([0.1], patience=0)
