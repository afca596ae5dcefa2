"""ETO's published trajectory format with broken records: the error names file, record, id and
turn (eto_core/eto_format.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from environments.tidy import TidyEnv
from eto_core import stages
from eto_core.config import load_recipe
from eto_core.eto_format import PromptMismatch, import_eto_file, load_expert_file
from eto_core.records import RecordError
from tests.eto_core.eto_files import eto_record, write_eto_file
from tests.reliability.conftest import Fault

ROOT = Path(__file__).resolve().parents[2]


def _record(rid: str, turns: list[tuple[str, str]]) -> dict[str, Any]:
    return {"id": rid, "conversations": [{"from": f, "value": v} for f, v in turns]}


GOOD = [("human", "instruction"), ("gpt", "OK"), ("human", "task"), ("gpt", "Thought: t\nAction: a")]


def _write(tmp_path: Path, records: list[Any]) -> Path:
    path = tmp_path / "eto_sft.json"
    path.write_text(json.dumps(records))
    return path


def test_wrong_role(tmp_path: Path, fault: Fault) -> None:
    bad = _record("b", [*GOOD[:3], ("assistant", "Thought: t\nAction: a")])
    path = _write(tmp_path, [_record("a", GOOD), bad])
    with fault("ETO files", "turn with role 'assistant' instead of 'gpt'", RecordError,
               r"eto_sft\.json: record 1 \(id 'b'\): turn 3 has role 'assistant', expected 'human' or 'gpt'"):
        import_eto_file(path, env="webshop")


def test_empty_turn(tmp_path: Path, fault: Fault) -> None:
    path = _write(tmp_path, [_record("a", [*GOOD[:3], ("gpt", "  ")])])
    with fault("ETO files", "blank gpt turn", RecordError,
               r"eto_sft\.json: record 0 \(id 'a'\): turn 3 \(gpt\) is empty"):
        import_eto_file(path, env="webshop")


def test_ends_on_human_turn(tmp_path: Path, fault: Fault) -> None:
    path = _write(tmp_path, [_record("a", [*GOOD, ("human", "Observation: more")])])
    with fault("ETO files", "conversation ending on a human turn", RecordError,
               r"eto_sft\.json: record 0 \(id 'a'\): must start with a human turn and end with a gpt turn"):
        import_eto_file(path, env="webshop")


def test_two_agent_turns_in_a_row(tmp_path: Path, fault: Fault) -> None:
    path = _write(tmp_path, [_record("a", [*GOOD, ("gpt", "Thought: again\nAction: b")])])
    with fault("ETO files", "two gpt turns in a row", RecordError,
               r"record 0 \(id 'a'\): turns 3 and 4 are both assistant"):
        import_eto_file(path, env="webshop")


def test_missing_id_and_no_agent_turn(tmp_path: Path, fault: Fault) -> None:
    path = _write(tmp_path, [{"conversations": [{"from": "human", "value": "x"}]}])
    with fault("ETO files", "record without 'id'", RecordError, r"eto_sft\.json: record 0 \(id ''\): missing 'id'"):
        import_eto_file(path, env="webshop")
    path = _write(tmp_path, [_record("a", GOOD[:2])])
    with fault("ETO files", "record with only the prompt (no agent turn)", RecordError,
               r"record 0 \(id 'a'\): has no agent turn after the 3 prompt messages"):
        import_eto_file(path, env="webshop")


def test_truncated_jsonl(tmp_path: Path, fault: Fault) -> None:
    path = tmp_path / "eto_sft.jsonl"
    path.write_text(json.dumps(_record("a", GOOD)) + "\n" + json.dumps(_record("b", GOOD))[:30])
    with fault("ETO files", "ETO JSONL cut mid-record", RecordError,
               r"eto_sft\.jsonl: line 2 is not valid JSON .*truncated"):
        import_eto_file(path, env="webshop")


def test_not_a_list(tmp_path: Path, fault: Fault) -> None:
    path = tmp_path / "eto_sft.json"
    path.write_text(json.dumps({"id": "a"}))
    with fault("ETO files", "ETO file holding one object instead of a list", RecordError,
               r"eto_sft\.json: expected a JSON list of records \(or JSONL\), got dict"):
        import_eto_file(path, env="webshop")


def test_missing_file(tmp_path: Path, fault: Fault) -> None:
    with fault("ETO files", "data.expert_file that does not exist", RecordError,
               r"nope\.json: cannot read ETO file"):
        import_eto_file(tmp_path / "nope.json", env="webshop")


@pytest.mark.parametrize("reward", ["high", 2.0])
def test_bad_reward_field(tmp_path: Path, fault: Fault, reward: Any) -> None:
    path = _write(tmp_path, [{**_record("a", GOOD), "reward": reward}])
    with fault("ETO files", f"record with reward {reward!r}", RecordError,
               r"eto_sft\.json: record 0 \(id 'a'\): 'reward' is .*; expected a number in \[0, 1\]"):
        import_eto_file(path, env="webshop")


# -- the pipeline's import (data.expert_file): ids that name no task, twice, or another task ---------
def _tidy() -> TidyEnv:
    return TidyEnv(train_size=6, seen_size=2, unseen_size=2, dev_size=2)


def _tidy_records(tasks: list[str], ids: list[str]) -> list[dict[str, Any]]:
    env = _tidy()
    return [eto_record(env, task, rid) for task, rid in zip(tasks, ids, strict=True)]


def test_unknown_id(tmp_path: Path, fault: Fault) -> None:
    task = _tidy().tasks("train")[0]
    path = _write(tmp_path, _tidy_records([task, task], [task, "17"]))
    with fault("ETO files", "data.expert_file record whose id names no task of the environment", RecordError,
               r"eto_sft\.json: record 1 \(id '17' -> task '17'\): unknown id: environment 'tidy' has no such task"):
        load_expert_file(path, _tidy, one_shot=False)


def test_duplicate_id(tmp_path: Path, fault: Fault) -> None:
    task = _tidy().tasks("train")[0]
    path = _write(tmp_path, _tidy_records([task, task], [task, task]))
    with fault("ETO files", "two records with the same id", RecordError,
               rf"eto_sft\.json: record 1 \(id '{task}'\): duplicate id, record 0 has it too"):
        load_expert_file(path, _tidy, one_shot=False)


def test_prompt_mismatch(tmp_path: Path, fault: Fault) -> None:
    first, second = _tidy().tasks("train")[:2]
    path = _write(tmp_path, _tidy_records([first], [second]))  # plays the first task, names the second
    with fault("ETO files", "record whose task turn is another task than its id names (prompt mismatch)",
               PromptMismatch, rf"eto_sft\.json: record 0 \(id '{second}' -> task '{second}'\): prompt mismatch: "
               r"the record's task turn does not state the task's instruction\. Record: .*; task "):
        load_expert_file(path, _tidy, one_shot=False)


def test_expert_file_of_other_tasks_reaches_dpo(tmp_path: Path, fault: Fault) -> None:
    file = tmp_path / "eto_sft.json"
    recipe = load_recipe(ROOT / "recipes" / "mini.yaml", [f"storage.root={tmp_path / 'artifacts'}",
                                                          "data.train_tasks=2", f"data.expert_file={file}"])
    env = stages.env_factory(recipe)()
    others = env.tasks("train")[20:22]  # real tasks, but not the ones exploration plays
    write_eto_file(file, [eto_record(env, t, t) for t in others])
    store = stages.make_store(recipe, tmp_path / "state")
    expert = stages.expert_stage(recipe, store, progress=False)
    model = stages.model_init_stage(recipe, store, expert.ref)
    explored = stages.rollout_stage(recipe, store, model.ref, stage="explore", split="train", iteration=1,
                               gen=recipe.explore, progress=False)
    pairs = stages.pairs_stage(recipe, store, expert.ref, explored.ref, 1)
    with fault("ETO files", "data.expert_file whose tasks are none of the explored ones", ValueError,
               r"iteration 1: exploration produced no failure/success pairs because no expert matched: of 2 "
               r"explored episodes, 2 had no expert trajectory",
               lost="nothing: the finished stages (expert, explore, pairs) are reused by the next run"):
        stages.dpo_stage(recipe, store, model.ref, pairs.ref, 1)
