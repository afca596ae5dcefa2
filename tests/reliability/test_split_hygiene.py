"""Split hygiene: evaluation task ids that are also training task ids stop the pipeline before
training (data.on_split_overlap: error) or are reported loudly (warn) — eto_core/hygiene.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from environments import registry
from environments.base import Split, StepResult, TextEnv
from environments.sciworld.splits import build_splits
from environments.tidy import TidyEnv
from eto_core.config import Recipe, load_recipe
from eto_core.hygiene import SplitOverlapError, check_split_overlap, find_overlap
from eto_core.stages import check_splits, expert_stage, make_store
from tests.reliability.conftest import Fault

MINI = Path(__file__).resolve().parents[2] / "recipes" / "mini.yaml"


class LeakyEnv(TextEnv):
    """Splits only: 'seen' reuses three training ids, as a careless split file would."""

    name = "leaky"
    max_steps = 3

    def tasks(self, split: Split) -> list[str]:
        train = [f"t{i}" for i in range(20)]
        return {"train": train, "seen": ["t1", "s0", "t5", "t7"], "unseen": ["u0", "u1", "u2", "u3"],
                "dev": []}[split]

    def reset(self, task_id: str) -> tuple[str, dict[str, Any]]:
        return "room", {"instruction": "do it"}

    def step(self, action: str) -> StepResult:
        return StepResult("ok", 0.0, terminated=True, truncated=False)

    def expert(self, task_id: str) -> list[str] | None:
        return None

    def task_instruction(self) -> str:
        return "do it"

    def one_shot_example(self) -> list[tuple[str, str]]:
        return []


class LeakyTidy(TidyEnv):
    """The tidy env whose 'seen' split starts with two of its own training tasks."""

    def tasks(self, split: Split) -> list[str]:
        ids = super().tasks(split)
        return super().tasks("train")[:2] + ids if split == "seen" else ids


def _recipe(tmp_path: Path, env: str, mode: str = "error") -> Recipe:
    return load_recipe(MINI, [f"env.name={env}", "env.kwargs={}", f"data.on_split_overlap={mode}",
                              f"storage.root={tmp_path / 'artifacts'}"])


def test_clean_splits_pass_silently() -> None:
    assert check_split_overlap(["a", "b"], {"seen": ["c"], "unseen": ["d"]}) == {}


def test_overlap_lists_first_ten_ids_and_the_count() -> None:
    train = [f"id{i}" for i in range(30)]
    with pytest.raises(SplitOverlapError, match=r"env 'x': 25 seen task id\(s\) are also training tasks: "
                       r"id5, id6, id7, id8, id9, id10, id11, id12, id13, id14, \.\.\.; 1 unseen .*: id0\. "):
        check_split_overlap(train, {"seen": train[5:], "unseen": ["id0", "new"]}, source="env 'x'")


def test_fake_env_overlap_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fault: Fault) -> None:
    monkeypatch.setitem(registry._CONSTRUCTORS, "leaky", LeakyEnv)
    with fault("split hygiene", "seen split sharing 3 task ids with train (on_split_overlap: error)",
               SplitOverlapError,
               r"environment 'leaky': 3 seen task id\(s\) are also training tasks: t1, t5, t7\. .*"
               r"data\.on_split_overlap: warn"):
        check_splits(_recipe(tmp_path, "leaky"))


def test_fake_env_overlap_warns_loudly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(registry._CONSTRUCTORS, "leaky", LeakyEnv)
    with caplog.at_level(logging.WARNING, logger="eto_core.hygiene"):
        overlap = check_splits(_recipe(tmp_path, "leaky", mode="warn"))
    assert overlap == {"seen": ["t1", "t5", "t7"]}
    [record] = [r for r in caplog.records if r.name == "eto_core.hygiene"]
    assert record.levelno == logging.WARNING
    assert "SPLIT OVERLAP" in record.getMessage() and "t1, t5, t7" in record.getMessage()


def test_expert_stage_refuses_before_writing_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fault: Fault
) -> None:
    monkeypatch.setitem(registry._CONSTRUCTORS, "leaky-tidy", LeakyTidy)
    recipe = load_recipe(MINI, ["env.name=leaky-tidy", f"storage.root={tmp_path / 'artifacts'}"])
    store = make_store(recipe, tmp_path / "state")
    with fault("split hygiene", "pipeline run whose env evaluates on 2 training tasks", SplitOverlapError,
               r"environment 'leaky-tidy': 2 seen task id\(s\) are also training tasks: "
               r"tidy-train-00000, tidy-train-00001\.",
               lost="nothing: refused before the expert stage wrote any artifact"):
        expert_stage(recipe, store, progress=False)
    assert not (tmp_path / "artifacts").exists()


def test_expert_stage_goes_on_in_warn_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(registry._CONSTRUCTORS, "leaky-tidy", LeakyTidy)
    recipe = load_recipe(MINI, ["env.name=leaky-tidy", "data.on_split_overlap=warn",
                                f"storage.root={tmp_path / 'artifacts'}"])
    with caplog.at_level(logging.WARNING, logger="eto_core.hygiene"):
        result = expert_stage(recipe, make_store(recipe, tmp_path / "state"), progress=False)
    assert result.metrics["expert_trajectories"] > 0
    assert "tidy-train-00000, tidy-train-00001" in caplog.text


def test_registered_tidy_splits_are_clean(tmp_path: Path) -> None:
    recipe = load_recipe(MINI, [f"storage.root={tmp_path}"])
    assert check_splits(recipe) == {}
    env = registry.make_env("tidy", train_size=40, seen_size=6, unseen_size=6, dev_size=4)
    assert find_overlap(env.tasks("train"), {s: env.tasks(s) for s in ("seen", "unseen", "dev")}) == {}  # type: ignore[arg-type]


def test_overlapping_eto_split_files(tmp_path: Path, fault: Fault) -> None:
    files = {"sciworld_train_indices.json": [["task-3-find-animal", v] for v in range(6)],
             "sciworld_dev_indices.json": [["task-3-find-animal", 2], ["task-3-find-animal", 9]],
             "sciworld_test_indices.json": [["task-3-find-animal", 12]]}
    for name, items in files.items():
        (tmp_path / name).write_text(json.dumps(items))
    splits = build_splits("eto", ["find-animal"], variations=dict, eto_dir=tmp_path, eval_per_type=10,
                          train_per_type=None)
    with fault("split hygiene", "ETO split files whose dev list repeats a train item", SplitOverlapError,
               r"sciworld eto splits: 1 seen task id\(s\) are also training tasks: find-animal/2\."):
        check_split_overlap(splits["train"], {"seen": splits["seen"], "unseen": splits["unseen"]},
                            source="sciworld eto splits")
    clean = build_splits("eto-leak-free", ["find-animal"], variations=dict, eto_dir=tmp_path, eval_per_type=10,
                         train_per_type=None)
    assert check_split_overlap(clean["train"], {"seen": clean["seen"], "unseen": clean["unseen"]}) == {}
