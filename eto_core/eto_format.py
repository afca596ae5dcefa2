"""Import ETO's published trajectory files (``{"id", "conversations": [{"from", "value"}]}``).

ETO's SFT data are expert trajectories in the FastChat format: alternating ``human`` / ``gpt``
turns, starting with the instruction and ending on an agent turn. They carry no reward: an
expert trajectory counts as a success with reward 1.0 unless the record has a ``reward`` field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eto_core.records import Message, RecordError, Trajectory

_ROLE = {"human": "user", "gpt": "assistant", "system": "system"}


def _fail(path: Path, index: int, record_id: str, detail: str) -> RecordError:
    return RecordError(
        f"{path}: record {index} (id {record_id!r}): {detail}. ETO records are "
        '{"id": ..., "conversations": [{"from": "human"|"gpt", "value": "..."}]}, alternating human/gpt '
        "and ending on a gpt turn: fix the record or drop it."
    )


def import_eto_file(
    path: str | Path,
    *,
    env: str,
    split: str = "train",
    num_prompt_messages: int = 3,
) -> list[Trajectory]:
    """Read an ETO JSON (list) or JSONL file as expert Trajectory records.

    ``num_prompt_messages`` is how many leading messages form the prompt (instruction, "OK",
    in-context example turns, task): 3 without an in-context example.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecordError(f"{path}: cannot read ETO file ({exc.strerror}).") from None
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise RecordError(
                    f"{path}: line {lineno} is not valid JSON ({exc.msg}); the file may be truncated."
                ) from None
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a JSON list of records (or JSONL), got {type(data).__name__}.")
    out: list[Trajectory] = []
    for index, rec in enumerate(data):
        rid = str(rec.get("id", "")) if isinstance(rec, dict) else ""
        if not isinstance(rec, dict) or not rid:
            raise _fail(path, index, rid, "missing 'id'")
        conv = rec.get("conversations")
        if not isinstance(conv, list) or not conv:
            raise _fail(path, index, rid, "missing or empty 'conversations'")
        messages: list[Message] = []
        for turn_no, turn in enumerate(conv):
            if not isinstance(turn, dict) or turn.get("from") not in _ROLE:
                got = turn.get("from") if isinstance(turn, dict) else turn
                raise _fail(path, index, rid, f"turn {turn_no} has role {got!r}, expected 'human' or 'gpt'")
            value = turn.get("value")
            if not isinstance(value, str) or not value.strip():
                raise _fail(path, index, rid, f"turn {turn_no} ({turn['from']}) is empty")
            messages.append({"role": _ROLE[turn["from"]], "content": value})
        body = [m for m in messages if m["role"] != "system"]
        for turn_no, (a, b) in enumerate(zip(body, body[1:], strict=False)):
            if a["role"] == b["role"]:
                raise _fail(path, index, rid, f"turns {turn_no} and {turn_no + 1} are both {a['role']}")
        if body[0]["role"] != "user" or body[-1]["role"] != "assistant":
            raise _fail(path, index, rid, "must start with a human turn and end with a gpt turn")
        if len(messages) <= num_prompt_messages:
            raise _fail(path, index, rid, f"has no agent turn after the {num_prompt_messages} prompt messages")
        reward = rec.get("reward", 1.0)
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not 0.0 <= reward <= 1.0:
            raise _fail(path, index, rid, f"'reward' is {reward!r}; expected a number in [0, 1]")
        reward = float(reward)
        out.append(
            Trajectory(
                task_id=rid,
                env=env,
                split=split,
                source="expert",
                iteration=0,
                model_uri="expert",
                messages=messages,
                num_prompt_messages=num_prompt_messages,
                reward=reward,
                success=reward >= 1.0,
                num_steps=sum(m["role"] == "assistant" for m in messages[num_prompt_messages:]),
                terminate_reason="success" if reward >= 1.0 else "failure",
            )
        )
    return out
