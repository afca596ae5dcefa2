"""Real-data split rules: ETO's index files (leak-free and exact) and the category hold-out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from environments.base import SPLITS
from environments.check import check_env
from environments.webshop import WebShopDataError, WebShopEnv, eto_overlap
from environments.webshop.splits import hashed_category_held_out
from environments.webshop.text import normalize

SHARED_SPLITS = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "eto_splits"


@pytest.mark.skipif(
    not (SHARED_SPLITS / "webshop_test_indices.json").is_file(),
    reason=f"ETO's split files are not at {SHARED_SPLITS} (the shared test data folder)",
)
def test_eto_lists_overlap_by_21() -> None:
    assert eto_overlap(SHARED_SPLITS) == 21
    train = json.loads((SHARED_SPLITS / "webshop_train_indices.json").read_text())
    test = json.loads((SHARED_SPLITS / "webshop_test_indices.json").read_text())
    assert (len(train), len(test)) == (1824, 200)


@pytest.fixture()
def real_dir(small_dir: Path, tmp_path: Path) -> Path:
    """The synthetic files without synthetic.json: read as real WebShop data."""
    for name in ("items_shuffle.json", "items_ins_v2.json", "items_human_ins.json"):
        shutil.copy(small_dir / name, tmp_path / name)
    return tmp_path


def write_eto(folder: Path, train: list[int], test: list[int]) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "webshop_train_indices.json").write_text(json.dumps(train))
    (folder / "webshop_test_indices.json").write_text(json.dumps(test))
    return folder


def test_eto_splits_leak_free_and_exact(real_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    train, test = list(range(0, 120)), [115, 116, 117, 118, 119, *range(120, 160)]
    splits_dir = write_eto(tmp_path / "eto", train, test)
    assert eto_overlap(splits_dir) == 5
    leak_free = WebShopEnv(real_dir, splits_dir=splits_dir, unseen_size=40, cache_dir=cache_dir)
    exact = WebShopEnv(real_dir, splits_dir=splits_dir, leak_free=False, unseen_size=40, cache_dir=cache_dir)
    ids = [f"webshop-{i}" for i in range(200)]
    assert leak_free.tasks("train") == ids[:120] and leak_free.tasks("seen") == ids[120:160]
    assert exact.tasks("seen") == [ids[i] for i in test] and exact.tasks("train") == ids[:115]
    assert leak_free.tasks("dev") == exact.tasks("dev") == []
    train_paths = {normalize(leak_free.goal(t).product_category) for t in leak_free.tasks("train")}
    for env in (leak_free, exact):
        unseen = env.tasks("unseen")
        assert 0 < len(unseen) <= 40
        assert all(int(t.split("-")[1]) >= 160 for t in unseen)
        assert all(normalize(env.goal(t).product_category) not in train_paths for t in unseen)
        check_env(env, split_sample=3)


def test_eto_splits_must_fit_the_goal_list(real_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    splits_dir = write_eto(tmp_path / "eto", [0, 1], [99999])
    with pytest.raises(WebShopDataError, match="index goal 99999 .*full catalogue"):
        WebShopEnv(real_dir, splits_dir=splits_dir, cache_dir=cache_dir)
    with pytest.raises(WebShopDataError, match="ETO split file not found"):
        WebShopEnv(real_dir, splits_dir=tmp_path / "nowhere", cache_dir=cache_dir)


def test_real_data_without_split_files_holds_out_hashed_categories(real_dir: Path, cache_dir: Path) -> None:
    env = WebShopEnv(real_dir, seen_size=20, dev_size=10, unseen_size=20, cache_dir=cache_dir)
    ids = [t for s in SPLITS for t in env.tasks(s)]
    assert len(ids) == len(set(ids)) and env.tasks("unseen")
    for split in ("train", "dev", "seen"):
        assert not any(hashed_category_held_out(env.goal(t)) for t in env.tasks(split))
    assert all(hashed_category_held_out(env.goal(t)) for t in env.tasks("unseen"))
    check_env(env, split_sample=3)


def test_synthetic_data_refuses_eto_split_files(small_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="only applies to real WebShop data"):
        WebShopEnv(small_dir, splits_dir=write_eto(tmp_path / "eto", [0], [1]), cache_dir=cache_dir)
