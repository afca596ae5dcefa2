"""Draft tokens looked up in a row's own context (prompt-lookup decoding).

An agent's turn repeats much of what it has read: object and place names from the
observation, the action grammar and phrasing of the one-shot example. So the tokens that
follow the latest earlier occurrence of the turn's last few tokens are a good guess at what
comes next. The decoding loop feeds that guess to the model together with the last token and
keeps the longest run of it that the model's own greedy choices confirm: the turn is the
greedy one, written in fewer forwards. (Up to float rounding: a forward of several tokens may
sum in another order than one of a single token, which could flip a near-tie; the benchmarks'
and tests' turns came out the same.) On tidy, SmolLM2 wrote 3.5 tokens per forward with 4
drafted (docs/benchmarks.md, "Lookup drafts").
"""

from __future__ import annotations

from collections.abc import Iterable


class LookupDrafter:
    """One row's context and an index from each n-gram (n = 1..``max_ngram``) to the position
    after its latest occurrence that has a follower."""

    def __init__(self, context: Iterable[int], max_ngram: int = 3) -> None:
        if max_ngram < 1:
            raise ValueError("max_ngram must be at least 1")
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        self._after: dict[tuple[int, ...], int] = {}
        self.extend(context)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append tokens to the context."""
        seq = self.tokens
        for token in tokens:
            # The n-grams ending at the old last token now have a follower (the new token):
            # index them before appending, so a lookup of the tail never finds itself.
            end = len(seq)
            for n in range(1, min(self.max_ngram, end) + 1):
                self._after[tuple(seq[end - n : end])] = end
            seq.append(int(token))

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the context's tail,
        the longest matching tail first; empty when the last token never occurred before."""
        seq = self.tokens
        if k < 1 or not seq:
            return []
        for n in range(min(self.max_ngram, len(seq)), 0, -1):
            start = self._after.get(tuple(seq[-n:]))
            if start is not None:
                return seq[start : start + k]
        return []


def accepted(draft: list[int], greedy: list[int]) -> int:
    """How many leading draft tokens the model confirms: ``greedy[j]`` is the model's choice
    after the last token and the first j drafts, so draft j counts while it equals that
    choice and every draft before it counted."""
    count = 0
    for token, choice in zip(draft, greedy, strict=False):
        if token != choice:
            break
        count += 1
    return count
