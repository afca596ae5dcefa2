"""Which ETO iteration to keep, and when to stop iterating.

ETO's gains peak after one to three iterations and then decline (the policy overfits its own
pairs). Each iteration's policy is scored on a selection split that is neither trained on nor
reported (ScienceWorld's dev split; elsewhere a held-out slice of the training tasks), the best
so far is the champion, and iterating stops once ``patience`` iterations in a row failed to
beat it by more than ``min_delta``. Selecting on the reported seen/unseen splits would make
their numbers optimistic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Choice:
    best_iteration: int
    """Index into the scores (0 = the SFT policy) of the champion: the first of equal bests."""
    best_score: float
    stop: bool
    """True once the last ``patience`` iterations all failed to improve on the champion."""
    reason: str


def choose_iteration(scores: Sequence[float], *, patience: int = 1, min_delta: float = 0.0) -> Choice:
    """The champion among ``scores`` (score of iteration i at index i) and whether to stop."""
    if not scores:
        raise ValueError("choose_iteration needs at least one score (the SFT policy's)")
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    best = 0
    for i in range(1, len(scores)):
        if scores[i] > scores[best] + min_delta:
            best = i
    since = len(scores) - 1 - best
    stop = since >= patience
    if stop:
        reason = (f"iteration {best} ({scores[best]:.4f}) not beaten by more than {min_delta:g} in the "
                  f"{since} iteration(s) after it: stop")
    elif best == len(scores) - 1:
        reason = f"iteration {best} is the best so far ({scores[best]:.4f})"
    else:
        reason = f"iteration {best} still leads ({scores[best]:.4f}); {patience - since} more without gain stops"
    return Choice(best, scores[best], stop, reason)
