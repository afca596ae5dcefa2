"""Record schemas: round trips, and malformed files fail naming the file, row and field."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from eto_core.records import (
    RecordError,
    Trajectory,
    frame_to_trajectories,
    read_records,
    to_frame,
    write_records,
)


def _traj(i: int) -> Trajectory:
    return Trajectory(
        task_id=f"t{i}", env="tidy", split="train", source="expert", iteration=0, model_uri="expert",
        messages=[{"role": "user", "content": "task"}, {"role": "assistant", "content": "Thought: a\nAction: b"}],
        num_prompt_messages=1, reward=1.0, success=True, num_steps=1, terminate_reason="success",
    )


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_roundtrip(tmp_path: Path, suffix: str) -> None:
    trajs = [_traj(i) for i in range(3)]
    path = tmp_path / f"t{suffix}"
    write_records(to_frame(trajs, "trajectories"), path, "trajectories")
    assert frame_to_trajectories(read_records(path, "trajectories")) == trajs
    assert not list(tmp_path.glob(".*tmp")), "no temp file left behind"


def test_bad_field_names_row_and_field(tmp_path: Path) -> None:
    frame = to_frame([_traj(i) for i in range(3)], "trajectories")
    frame.loc[2, "reward"] = 1.5
    frame.at[1, "messages"] = [{"role": "robot", "content": "x"}]
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    with pytest.raises(RecordError) as err:
        read_records(path, "trajectories")
    text = str(err.value)
    assert "bad.parquet" in text
    assert "row 2, field 'reward'" in text
    assert "row 1, field 'messages'" in text


def test_truncated_files(tmp_path: Path) -> None:
    frame = to_frame([_traj(i) for i in range(3)], "trajectories")
    pq = tmp_path / "t.parquet"
    frame.to_parquet(pq)
    pq.write_bytes(pq.read_bytes()[:100])
    with pytest.raises(RecordError, match="corrupt or truncated"):
        read_records(pq, "trajectories")
    js = tmp_path / "t.jsonl"
    frame.to_json(js, orient="records", lines=True)
    js.write_text(js.read_text()[:-30])
    with pytest.raises(RecordError, match="line 3 is not valid JSON"):
        read_records(js, "trajectories")


def test_missing_and_unknown_fields(tmp_path: Path) -> None:
    frame = to_frame([_traj(0)], "trajectories").drop(columns=["reward"])
    frame["rewrd"] = 1.0
    with pytest.raises(RecordError) as err:
        write_records(frame, tmp_path / "x.parquet", "trajectories")
    assert "reward" in str(err.value) and "rewrd" in str(err.value)
    assert not (tmp_path / "x.parquet").exists()


def test_empty_frame_roundtrip(tmp_path: Path) -> None:
    empty = to_frame([], "pairs")
    write_records(empty, tmp_path / "p.parquet", "pairs")
    assert len(read_records(tmp_path / "p.parquet", "pairs")) == 0
    assert isinstance(empty, pd.DataFrame)
