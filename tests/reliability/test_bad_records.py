"""Trajectory and pair files that are truncated, mistyped or missing fields fail at the boundary,
naming the file, the row and the field (eto_core/records.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from eto_core.records import RecordError, read_records, to_frame, validate, write_records
from tests.conftest import toy_pair, toy_trajectory
from tests.reliability.conftest import Fault


@pytest.fixture
def trajectories() -> pd.DataFrame:
    return to_frame([toy_trajectory("mug", "desk"), toy_trajectory("pen", "bed", good=False)], "trajectories")


def _unchanged(path: Path, before: bytes) -> None:
    assert path.read_bytes() == before  # a failed read never deletes or rewrites the input


def test_truncated_parquet(tmp_path: Path, trajectories: pd.DataFrame, fault: Fault) -> None:
    path = tmp_path / "trajectories.parquet"
    write_records(trajectories, path, "trajectories")
    data = path.read_bytes()[:200]
    path.write_bytes(data)
    with fault("records", "Parquet file cut to 200 bytes", RecordError,
               r"trajectories\.parquet: cannot be read as \.parquet .*corrupt or truncated: delete it and rerun"):
        read_records(path, "trajectories")
    _unchanged(path, data)


def test_truncated_jsonl(tmp_path: Path, trajectories: pd.DataFrame, fault: Fault) -> None:
    path = tmp_path / "trajectories.jsonl"
    write_records(trajectories, path, "trajectories")
    data = path.read_bytes()[:-50]
    path.write_bytes(data)
    with fault("records", "JSONL file cut mid-line", RecordError,
               r"trajectories\.jsonl: line 2 is not valid JSON .*truncated"):
        read_records(path, "trajectories")
    _unchanged(path, data)


def test_parquet_with_wrong_column_type(tmp_path: Path, trajectories: pd.DataFrame, fault: Fault) -> None:
    path = tmp_path / "bad.parquet"
    bad = trajectories.copy()
    bad["iteration"] = ["zero", "one"]
    bad.to_parquet(path, index=False)
    with fault("records", "Parquet column 'iteration' holds strings", RecordError,
               r"bad\.parquet: .*row 0, field 'iteration': dtype\('int64'\) \(got 'zero'\)"):
        read_records(path, "trajectories")


def test_parquet_with_reward_as_text(tmp_path: Path, trajectories: pd.DataFrame, fault: Fault) -> None:
    path = tmp_path / "bad.parquet"
    bad = trajectories.copy()
    bad["reward"] = bad["reward"].astype(str)
    bad.to_parquet(path, index=False)
    with fault("records", "Parquet column 'reward' holds text", RecordError,
               r"bad\.parquet: .*field 'reward': dtype\('float64'\)"):
        read_records(path, "trajectories")


def test_parquet_missing_a_column(tmp_path: Path, trajectories: pd.DataFrame, fault: Fault) -> None:
    path = tmp_path / "bad.parquet"
    trajectories.drop(columns=["reward"]).to_parquet(path, index=False)
    with fault("records", "Parquet file without the 'reward' column", RecordError,
               r"bad\.parquet: .*field 'reward': missing"):
        read_records(path, "trajectories")


def test_parquet_with_an_unknown_column(tmp_path: Path, trajectories: pd.DataFrame, fault: Fault) -> None:
    path = tmp_path / "bad.parquet"
    trajectories.assign(score=0.5).to_parquet(path, index=False)
    with fault("records", "Parquet file with an extra 'score' column", RecordError,
               r"bad\.parquet: .*field 'score': not a Trajectory field"):
        read_records(path, "trajectories")


def test_jsonl_records_without_fields(tmp_path: Path, fault: Fault) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("{}\n{}\n")
    with fault("records", "JSONL lines that are empty objects (no fields at all)", RecordError,
               r"empty\.jsonl: Trajectory records lack the fields \['task_id'"):
        read_records(path, "trajectories")


def test_an_empty_jsonl_file_is_zero_records(tmp_path: Path) -> None:
    """No lines is no records (what writing an empty pair list gives), not an error."""
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    frame = read_records(path, "trajectories")
    assert frame.empty and "task_id" in frame.columns


def test_unknown_file_type(tmp_path: Path, fault: Fault) -> None:
    path = tmp_path / "trajectories.csv"
    path.write_text("task_id\n")
    with fault("records", "record file with a .csv suffix", RecordError,
               r"trajectories\.csv: unknown record file type '\.csv'; use \.parquet or \.jsonl"):
        read_records(path, "trajectories")


def test_jsonl_message_with_unknown_role(tmp_path: Path, trajectories: pd.DataFrame, fault: Fault) -> None:
    path = tmp_path / "t.jsonl"
    write_records(trajectories, path, "trajectories")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["messages"][0]["role"] = "robot"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with fault("records", "trajectory message with role 'robot'", RecordError,
               r"t\.jsonl: .*row 1, field 'messages': must be a non-empty list of \{role, content\}"):
        read_records(path, "trajectories")


def test_jsonl_empty_turn(tmp_path: Path, trajectories: pd.DataFrame, fault: Fault) -> None:
    path = tmp_path / "t.jsonl"
    write_records(trajectories, path, "trajectories")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["messages"][-1]["content"] = "   "
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with fault("records", "trajectory with a blank agent turn", RecordError,
               r"t\.jsonl: .*row 0, field 'messages': .*non-empty content"):
        read_records(path, "trajectories")


def test_reward_out_of_range(trajectories: pd.DataFrame, fault: Fault) -> None:
    bad = trajectories.copy()
    bad.loc[1, "reward"] = 1.5
    with fault("records", "trajectory reward 1.5 (outside [0, 1])", RecordError,
               r"explore\.parquet: .*row 1, field 'reward': less_than_or_equal_to\(1\.0\)"):
        validate(bad, "trajectories", source="explore.parquet")


def test_pair_chosen_not_ending_on_agent_turn(tmp_path: Path, fault: Fault) -> None:
    pairs = to_frame([toy_pair("mug", "desk"), toy_pair("pen", "bed")], "pairs")
    pairs.at[1, "chosen"] = [*pairs.at[1, "chosen"], {"role": "user", "content": "Observation: done."}]
    path = tmp_path / "pairs.parquet"
    pairs.to_parquet(path, index=False)
    with fault("records", "pair whose chosen side ends on an observation", RecordError,
               r"pairs\.parquet: .*row 1, field 'chosen': must end on an agent \(assistant\) turn"):
        read_records(path, "pairs")


def test_pair_with_unknown_kind_and_duplicate_id(fault: Fault) -> None:
    pairs = to_frame([toy_pair("mug", "desk"), toy_pair("pen", "bed")], "pairs")
    pairs.loc[1, "pair_id"] = pairs.loc[0, "pair_id"]
    pairs.loc[0, "kind"] = "tie"
    with fault("records", "pairs with a duplicate pair_id and kind 'tie'", RecordError,
               r"(?=.*field 'pair_id')(?=.*row 0, field 'kind': isin)pairs\.jsonl: "):
        validate(pairs, "pairs", source="pairs.jsonl")


def test_write_refuses_invalid_records(tmp_path: Path, trajectories: pd.DataFrame, fault: Fault) -> None:
    bad = trajectories.copy()
    bad.loc[0, "split"] = "test"
    path = tmp_path / "out.parquet"
    with fault("records", "writing a trajectory with split 'test'", RecordError,
               r"out\.parquet: .*row 0, field 'split': isin", lost="nothing: no file is written"):
        write_records(bad, path, "trajectories")
    assert not path.exists() and not list(tmp_path.iterdir())
