from __future__ import annotations

import pytest

from eto_core.draft_lookup import LookupDrafter, accepted


def test_a_draft_continues_the_latest_earlier_occurrence_of_the_longest_matching_tail() -> None:
    d = LookupDrafter([1, 2, 3, 4, 9, 2, 3, 5, 6, 7, 1, 2, 3])
    # Tail (1, 2, 3) occurred at the start: what followed it there.
    assert d.draft(3) == [4, 9, 2]
    d.extend([8, 2, 3])
    # (8, 2, 3) never occurred before; the 2-gram (2, 3) last occurred at 11..12, and 8 followed it.
    assert d.draft(2) == [8, 2]
    d.extend([5])
    # (2, 3, 5) occurred once before: 6, 7, 1 followed.
    assert d.draft(3) == [6, 7, 1]


def test_no_draft_for_an_unseen_token_a_short_one_near_the_end_and_none_for_k_0() -> None:
    d = LookupDrafter([1, 2, 3])
    assert d.draft(4) == []  # 3 never occurred before
    d.extend([2])
    assert d.draft(4) == [3, 2]  # only two tokens followed the earlier 2
    assert d.draft(0) == []
    assert LookupDrafter([]).draft(3) == []
    with pytest.raises(ValueError):
        LookupDrafter([1], max_ngram=0)


def test_the_tail_never_matches_itself() -> None:
    d = LookupDrafter([7, 7])
    assert d.draft(3) == [7]  # the first 7 was followed by the second; the second by nothing yet
    assert LookupDrafter([5]).draft(2) == []


def test_accepted_counts_the_drafts_the_greedy_choices_confirm_in_a_row() -> None:
    assert accepted([4, 5, 6], [4, 5, 6, 9]) == 3
    assert accepted([4, 5, 6], [4, 0, 6, 9]) == 1
    assert accepted([4, 5, 6], [0, 5, 6, 9]) == 0
    assert accepted([], [3]) == 0
