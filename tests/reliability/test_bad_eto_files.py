"""ETO's published trajectory format with broken records: the error names file, record, id and
turn (eto_core/eto_format.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eto_core.eto_format import import_eto_file
from eto_core.records import RecordError
from tests.reliability.conftest import Fault


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
