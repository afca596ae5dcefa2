"""Split hygiene: evaluation tasks must not be among the tasks a recipe trains on.

A seen/unseen task that also appears in the training tasks (expert SFT data or exploration)
inflates the reported success rate without any sign in the numbers, so the pipeline checks the
task ids before training and refuses, or warns loudly where the recipe accepts the leak on
purpose (``data.on_split_overlap: warn``, e.g. to reproduce a published setup that overlaps).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Literal

log = logging.getLogger(__name__)

OverlapMode = Literal["error", "warn"]
SHOWN_IDS = 10


class SplitOverlapError(ValueError):
    """Evaluation task ids that also occur among the training task ids."""


def find_overlap(train_ids: Sequence[str], eval_ids: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Per evaluation split, its ids that are also training ids (in the evaluation split's order)."""
    train = set(train_ids)
    overlap = {split: [tid for tid in ids if tid in train] for split, ids in eval_ids.items()}
    return {split: ids for split, ids in overlap.items() if ids}


def describe_overlap(overlap: Mapping[str, Sequence[str]], source: str) -> str:
    parts = []
    for split, ids in overlap.items():
        shown = ", ".join(ids[:SHOWN_IDS]) + (", ..." if len(ids) > SHOWN_IDS else "")
        parts.append(f"{len(ids)} {split} task id(s) are also training tasks: {shown}")
    return f"{source}: " + "; ".join(parts)


def check_split_overlap(
    train_ids: Sequence[str],
    eval_ids: Mapping[str, Sequence[str]],
    *,
    mode: OverlapMode = "error",
    source: str = "recipe",
) -> dict[str, list[str]]:
    """Raise (``mode="error"``) or log a warning (``"warn"``) when evaluation ids are training ids.

    Returns the overlap per evaluation split (empty when the splits are clean).
    """
    overlap = find_overlap(train_ids, eval_ids)
    if not overlap:
        return overlap
    message = describe_overlap(overlap, source)
    if mode == "error":
        raise SplitOverlapError(
            f"{message}. Evaluation on tasks the agent trained on overstates its success: fix the "
            "environment's splits (env.kwargs), or set data.on_split_overlap: warn to run anyway."
        )
    log.warning("SPLIT OVERLAP (data.on_split_overlap=warn): %s; evaluation results are not held out.", message)
    return overlap
