"""Environment names, split sizes and benchmark data files that are wrong: refused with the
setting or file named (environments/registry.py, eto_core/stages/, benchmark loaders)."""

from __future__ import annotations

import json
from pathlib import Path

from environments.registry import make_env
from environments.sciworld.splits import SplitFileError, read_eto_split
from environments.webshop.data import WebShopDataError, load_attributes, load_products
from eto_core.config import load_recipe
from eto_core.stages import split_tasks
from tests.reliability.conftest import Fault

MINI = Path(__file__).resolve().parents[2] / "recipes" / "mini.yaml"


def test_unknown_environment(fault: Fault) -> None:
    with fault("environments", "env.name 'tidyy' (not registered)", ValueError,
               r"unknown environment 'tidyy'; set env\.name to one of: alfworld, sciworld, tidy, webshop"):
        make_env("tidyy")


def test_seen_tasks_larger_than_the_split(fault: Fault) -> None:
    recipe = load_recipe(MINI, ["data.seen_tasks=50"])  # mini's tidy env has 6 seen tasks
    with fault("environments", "data.seen_tasks = 50 with 6 seen tasks", ValueError,
               r"data\.seen_tasks = 50 but environment 'tidy' has only 6 seen tasks; lower data\.seen_tasks"):
        split_tasks(recipe, "seen", "evaluate")


def test_train_tasks_larger_than_the_split(fault: Fault) -> None:
    recipe = load_recipe(MINI, ["data.train_tasks=41"])  # 40 training tasks
    with fault("environments", "data.train_tasks = 41 with 40 train tasks", ValueError,
               r"data\.train_tasks = 41 but environment 'tidy' has only 40 train tasks"):
        split_tasks(recipe, "train", "expert")


def test_truncated_webshop_products(tmp_path: Path, fault: Fault) -> None:
    path = tmp_path / "items_shuffle_1000.json"
    path.write_text('[{"asin": "B01", "name": "mug"')
    with fault("benchmark data", "WebShop products file cut mid-record", WebShopDataError,
               r"items_shuffle_1000\.json: the products file is not valid JSON \(line 1, .*truncated"):
        load_products(path, {}, {})


def test_webshop_record_with_wrong_field_type(tmp_path: Path, fault: Fault) -> None:
    path = tmp_path / "items_ins_v2_1000.json"
    path.write_text(json.dumps({"B01": {"attributes": ["x"]}, "B02": "not a record"}))
    with fault("benchmark data", "WebShop attributes record that is a string", WebShopDataError,
               r"items_ins_v2_1000\.json: record 1 \(asin 'B02'\): field '\(record\)': expected a JSON object"):
        load_attributes(path)


def test_sciworld_split_file_with_bad_item(tmp_path: Path, fault: Fault) -> None:
    (tmp_path / "sciworld_test_indices.json").write_text('[["task-3-find-animal", 1], ["task-3-find-animal", -2]]')
    with fault("benchmark data", "ScienceWorld ETO split item with variation -2", SplitFileError,
               r"sciworld_test_indices\.json: item 1 is \['task-3-find-animal', -2\]; expected \[task name, variation >= 0\]"):
        read_eto_split(tmp_path, "unseen")
