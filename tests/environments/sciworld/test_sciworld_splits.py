from __future__ import annotations

import json
from pathlib import Path

import pytest

from environments.sciworld.splits import (
    TASK_TYPES,
    SplitFileError,
    build_splits,
    canonical_task_type,
    eto_overlap,
    interleave,
    parse_task_id,
    read_eto_split,
)

from .conftest import needs_package

ETO_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "eto_splits"
needs_eto = pytest.mark.skipif(
    not (ETO_DIR / "sciworld_train_indices.json").is_file(),
    reason=f"ETO's split files are not at {ETO_DIR} (only CI and developers have ../shared/data)",
)


@needs_package
def test_eto_task_names_map_to_scienceworld_names() -> None:
    assert canonical_task_type("task-10-measure-melting-point-(known-substance)") == "measure-melting-point-known-substance"
    assert canonical_task_type("task-2a-test-conductivity") == "test-conductivity"


def test_task_ids_parse_into_type_and_variation() -> None:
    assert parse_task_id("find-animal/12") == ("find-animal", 12)
    with pytest.raises(ValueError, match="find-animal/12"):
        parse_task_id("find-animal-12")


def test_interleave_spans_every_type_in_any_prefix() -> None:
    ids = interleave({"a": [1, 2, 3], "b": [7], "c": [4, 5]})
    assert ids == ["a/1", "b/7", "c/4", "a/2", "c/5", "a/3"]


@needs_eto
@needs_package
def test_eto_lists_are_reproduced_exactly_and_their_leak_is_reported() -> None:
    splits = build_splits("eto", list(TASK_TYPES), variations=dict, eto_dir=ETO_DIR, eval_per_type=10,
                          train_per_type=None)
    assert {s: len(ids) for s, ids in splits.items()} == {"train": 1483, "seen": 194, "unseen": 211}
    raw = json.loads((ETO_DIR / "sciworld_dev_indices.json").read_text())
    assert splits["seen"] == [f"{canonical_task_type(n)}/{v}" for n, v in raw]
    overlap = eto_overlap(ETO_DIR)
    assert len(overlap["seen"]) == 54 and overlap["unseen"] == []
    assert len(set(splits["train"]) & set(splits["seen"])) == 54


@needs_eto
@needs_package
def test_eto_leak_free_drops_the_overlap_from_train_only() -> None:
    splits = build_splits("eto-leak-free", list(TASK_TYPES), variations=dict, eto_dir=ETO_DIR,
                          eval_per_type=10, train_per_type=None)
    assert {s: len(ids) for s, ids in splits.items()} == {"train": 1483 - 54, "seen": 194, "unseen": 211}
    assert not set(splits["train"]) & (set(splits["seen"]) | set(splits["unseen"]))


def test_a_broken_or_missing_eto_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "sciworld_dev_indices.json").write_text('[["task-3-find-animal", "x"]]')
    with pytest.raises(SplitFileError, match=r"sciworld_dev_indices.json: item 0"):
        read_eto_split(tmp_path, "seen")
    (tmp_path / "sciworld_test_indices.json").write_text("[[")
    with pytest.raises(SplitFileError, match="sciworld_test_indices.json: not valid JSON"):
        read_eto_split(tmp_path, "unseen")
    with pytest.raises(SplitFileError, match="ETO split file not found"):
        read_eto_split(tmp_path, "train")


@needs_package
def test_a_broken_item_after_good_ones_is_named(tmp_path: Path) -> None:
    (tmp_path / "sciworld_dev_indices.json").write_text('[["task-3-find-animal", 3], ["task-3-find-animal", "x"]]')
    with pytest.raises(SplitFileError, match=r"sciworld_dev_indices.json: item 1"):
        read_eto_split(tmp_path, "seen")


def test_unknown_split_mode_is_named() -> None:
    with pytest.raises(ValueError, match="env.kwargs.splits"):
        build_splits("random", ["find-animal"], variations=dict, eto_dir=None, eval_per_type=1, train_per_type=None)


@needs_package
def test_unknown_task_type_is_named() -> None:
    from environments.sciworld.splits import check_task_types

    with pytest.raises(ValueError, match="ETO leaves it out"):
        check_task_types(["inclined-plane-determine-angle"])
    with pytest.raises(ValueError, match="not a ScienceWorld task type"):
        check_task_types(["find-unicorn"])
