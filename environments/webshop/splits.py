"""Which goals are train, dev, seen and unseen tasks.

Three rules, picked by the data:

- Synthetic catalogue (:mod:`environments.webshop.synthetic`): the generator holds out whole
  product categories. ``unseen`` = goals of held-out categories; the other goals, in goal
  order, fill ``seen``, then ``dev``, then ``train`` gets the rest. So ``seen`` is goals of
  training categories not trained on, and ``unseen`` asks for kinds of product training
  never showed.
- Real data with ETO's split files (``splits_dir`` holding ``webshop_train_indices.json`` and
  ``webshop_test_indices.json``, indices into the full goal list). 21 of ETO's 200 test goals
  also occur in its 1,824 training goals. ``leak_free=True`` (default): train = ETO's train
  list, seen = ETO's test list minus those 21 (179 goals). ``leak_free=False`` reproduces ETO's
  evaluation list exactly: seen = ETO's 200 test goals, train = ETO's train list minus the 21
  (1,803), since a task may not sit in two splits. ETO has no dev and no unseen split for
  WebShop: dev is empty, and ``unseen`` = goals in neither list whose product category
  (the full "A › B › C" path) no training goal has, the first ``unseen_size`` in goal order.
- Real data without split files: as for the synthetic catalogue, holding out the product
  category paths whose sha256 (of the normal form) is 0 mod 10, about a tenth of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from environments.webshop.data import Goal, WebShopDataError
from environments.webshop.text import normalize

ETO_TRAIN_FILE = "webshop_train_indices.json"
ETO_TEST_FILE = "webshop_test_indices.json"
HASH_HOLD_OUT_MODULUS = 10

SplitIndices = dict[str, list[int]]


def holdout_splits(
    goals: Sequence[Goal], held_out: Callable[[Goal], bool], seen_size: int, dev_size: int, unseen_size: int
) -> SplitIndices:
    kept = [g.index for g in goals if not held_out(g)]
    unseen = [g.index for g in goals if held_out(g)][:unseen_size]
    seen, dev, train = kept[:seen_size], kept[seen_size : seen_size + dev_size], kept[seen_size + dev_size :]
    return {"train": train, "dev": dev, "seen": seen, "unseen": unseen}


def hashed_category_held_out(goal: Goal) -> bool:
    digest = hashlib.sha256(normalize(goal.product_category).encode()).digest()
    return int.from_bytes(digest[:8], "big") % HASH_HOLD_OUT_MODULUS == 0


def read_eto_indices(splits_dir: Path) -> tuple[list[int], list[int]]:
    """ETO's (train, test) goal indices, in file order."""
    lists = []
    for name in (ETO_TRAIN_FILE, ETO_TEST_FILE):
        path = splits_dir / name
        if not path.is_file():
            raise WebShopDataError(
                f"{path}: ETO split file not found; splits_dir must hold {ETO_TRAIN_FILE} and {ETO_TEST_FILE} "
                "(from ETO's repository), or leave splits_dir unset."
            )
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise WebShopDataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}).") from None
        if not isinstance(raw, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in raw
        ):
            raise WebShopDataError(f"{path}: expected a JSON list of goal indices (non-negative integers).")
        lists.append(raw)
    return lists[0], lists[1]


def eto_overlap(splits_dir: str | Path) -> int:
    """How many of ETO's WebShop test goals also occur in its training goals (21)."""
    train, test = read_eto_indices(Path(splits_dir))
    return len(set(test) & set(train))


def eto_splits(goals: Sequence[Goal], splits_dir: Path, leak_free: bool, unseen_size: int) -> SplitIndices:
    train_ids, test_ids = read_eto_indices(splits_dir)
    biggest = max(train_ids + test_ids, default=-1)
    if biggest >= len(goals):
        raise WebShopDataError(
            f"{splits_dir}: ETO's split files index goal {biggest} but the catalogue has {len(goals)} goals. "
            "ETO's lists index the goals of the full catalogue (items_shuffle.json with items_ins_v2.json "
            "and items_human_ins.json): use those files, or leave splits_dir unset."
        )
    train_ids, test_ids = _dedupe(train_ids), _dedupe(test_ids)
    in_train, in_test = set(train_ids), set(test_ids)
    if leak_free:
        seen = [i for i in test_ids if i not in in_train]
        train = train_ids
    else:
        seen = test_ids
        train = [i for i in train_ids if i not in in_test]
    train_categories = {normalize(goals[i].product_category) for i in train}
    listed = in_train | in_test
    unseen = [
        g.index
        for g in goals
        if g.index not in listed and normalize(g.product_category) not in train_categories
    ][:unseen_size]
    return {"train": train, "dev": [], "seen": seen, "unseen": unseen}


def _dedupe(ids: list[int]) -> list[int]:
    return list(dict.fromkeys(ids))
