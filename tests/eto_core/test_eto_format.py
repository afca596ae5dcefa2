"""ETO's published format imports as Trajectory; malformed records fail naming record and turn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eto_core.eto_format import import_eto_file
from eto_core.records import RecordError, to_frame

GOOD = {
    "id": "webshop_7",
    "conversations": [
        {"from": "human", "value": "You are web shopping."},
        {"from": "gpt", "value": "OK"},
        {"from": "human", "value": "WebShop [SEP] Instruction: [SEP] i need a red shirt"},
        {"from": "gpt", "value": "Thought: search it.\nAction: search[red shirt]"},
        {"from": "human", "value": "Observation: results"},
        {"from": "gpt", "value": "Thought: buy.\nAction: click[buy now]"},
    ],
}


def _write(tmp_path: Path, records: object) -> Path:
    p = tmp_path / "eto.json"
    p.write_text(json.dumps(records))
    return p


def test_import_roundtrip(tmp_path: Path) -> None:
    (t,) = import_eto_file(_write(tmp_path, [GOOD]), env="webshop")
    assert t.task_id == "webshop_7" and t.num_steps == 2 and t.reward == 1.0 and t.success
    assert t.messages[3]["role"] == "assistant"
    assert len(to_frame([t], "trajectories")) == 1


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda r: r["conversations"][2].update({"from": "robot"}), "turn 2 has role 'robot'"),
        (lambda r: r["conversations"][3].update({"value": "  "}), "turn 3 (gpt) is empty"),
        (lambda r: r["conversations"].pop(), "end with a gpt turn"),
        (lambda r: r["conversations"].insert(1, {"from": "human", "value": "again"}), "both user"),
        (lambda r: r.pop("id"), "missing 'id'"),
    ],
)
def test_malformed_records_name_the_problem(tmp_path: Path, mutate: object, needle: str) -> None:
    bad = json.loads(json.dumps(GOOD))
    mutate(bad)  # type: ignore[operator]
    with pytest.raises(RecordError, match="record 1") as err:
        import_eto_file(_write(tmp_path, [GOOD, bad]), env="webshop")
    assert needle in str(err.value) and "eto.json" in str(err.value)


def test_truncated_jsonl_names_line(tmp_path: Path) -> None:
    p = tmp_path / "eto.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD)[:40] + "\n")
    with pytest.raises(RecordError, match="line 2"):
        import_eto_file(p, env="webshop")
