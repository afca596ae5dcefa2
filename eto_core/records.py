"""Trajectory, preference-pair and evaluation records, and their pandera schemas.

Records travel between stages as pandas DataFrames stored as Parquet (or JSONL). Every stage
validates what it reads and what it writes, so a bad file fails at the boundary with the
file, row and field named, instead of deep inside training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pandera.pandas as pa

Role = Literal["system", "user", "assistant"]
Message = dict[str, str]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant"})
SOURCES: frozenset[str] = frozenset({"expert", "explore", "eval"})
TERMINATE_REASONS: frozenset[str] = frozenset(
    {"success", "failure", "max_steps", "max_length", "env_error", "invalid_format"}
)


class RecordError(ValueError):
    """A record file or frame that breaks its schema; the message says where and what to do."""


@dataclass
class Trajectory:
    task_id: str
    env: str
    split: str
    source: str
    iteration: int
    model_uri: str
    messages: list[Message]
    """Whole conversation; the first ``num_prompt_messages`` are the prompt (instruction,
    in-context example, task), the rest alternate agent turn / observation."""
    num_prompt_messages: int
    reward: float
    success: bool
    num_steps: int
    terminate_reason: str
    seed: int = 0

    @classmethod
    def from_expert(cls, task_id: str, env: str, split: str, messages: list[Message], num_prompt_messages: int,
                    reward: float, success: bool, num_steps: int) -> Trajectory:
        """An expert's trajectory (replayed from the benchmark or imported): iteration 0, no model."""
        return cls(
            task_id=task_id,
            env=env,
            split=split,
            source="expert",
            iteration=0,
            model_uri="expert",
            messages=messages,
            num_prompt_messages=num_prompt_messages,
            reward=reward,
            success=success,
            num_steps=num_steps,
            terminate_reason="success" if success else "failure",
        )


@dataclass
class PreferencePair:
    pair_id: str
    task_id: str
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    chosen_reward: float
    rejected_reward: float
    kind: str
    """``lose``: the agent scored below the expert (expert chosen); ``win``: the reverse;
    ``self``: two of the agent's own samples of one task (the better one chosen); ``step``: two
    continuations from the same expert prefix, which is part of the prompt."""
    iteration: int


@dataclass
class EvalSummary:
    stage: str
    iteration: int
    split: str
    avg_reward: float
    success_rate: float
    mean_steps: float
    num_tasks: int
    extra: dict[str, float] = field(default_factory=dict)
    # The evaluation rollout's artifact ({"uri", "digest"}), so per-task rewards can be paired
    # across methods later (`eto compare`); empty where a summary was built without one.
    artifact: dict[str, str] = field(default_factory=dict)


def _is_messages(value: Any) -> bool:
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        return False
    for m in value:
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            return False
        if m["role"] not in ROLES or not isinstance(m["content"], str) or not m["content"].strip():
            return False
    return True


def _ends_on_agent(value: Any) -> bool:
    return _is_messages(value) and value[-1]["role"] == "assistant"


_MESSAGES_ERR = (
    "must be a non-empty list of {role, content} with role in system/user/assistant "
    "and non-empty content"
)

_messages_check = pa.Check(_is_messages, element_wise=True, error=_MESSAGES_ERR)
_unit = [pa.Check.ge(0.0), pa.Check.le(1.0)]

TRAJECTORY_SCHEMA = pa.DataFrameSchema(
    {
        "task_id": pa.Column(str, pa.Check.str_length(min_value=1)),
        "env": pa.Column(str, pa.Check.str_length(min_value=1)),
        "split": pa.Column(str, pa.Check.isin(["train", "seen", "unseen", "dev"])),
        "source": pa.Column(str, pa.Check.isin(sorted(SOURCES))),
        "iteration": pa.Column(int, pa.Check.ge(0)),
        "model_uri": pa.Column(str),
        "messages": pa.Column(object, _messages_check),
        "num_prompt_messages": pa.Column(int, pa.Check.ge(1)),
        "reward": pa.Column(float, _unit),
        "success": pa.Column(bool),
        "num_steps": pa.Column(int, pa.Check.ge(0)),
        "terminate_reason": pa.Column(str, pa.Check.isin(sorted(TERMINATE_REASONS))),
        "seed": pa.Column(int),
    },
    strict=True,
    name="Trajectory",
)

PAIR_SCHEMA = pa.DataFrameSchema(
    {
        "pair_id": pa.Column(str, pa.Check.str_length(min_value=1), unique=True),
        "task_id": pa.Column(str, pa.Check.str_length(min_value=1)),
        "prompt": pa.Column(object, _messages_check),
        "chosen": pa.Column(
            object, pa.Check(_ends_on_agent, element_wise=True, error="must end on an agent (assistant) turn")
        ),
        "rejected": pa.Column(
            object, pa.Check(_ends_on_agent, element_wise=True, error="must end on an agent (assistant) turn")
        ),
        "chosen_reward": pa.Column(float, _unit),
        "rejected_reward": pa.Column(float, _unit),
        "kind": pa.Column(str, pa.Check.isin(["lose", "win", "self", "step"])),
        "iteration": pa.Column(int, pa.Check.ge(0)),
    },
    strict=True,
    name="PreferencePair",
)

EVAL_SCHEMA = pa.DataFrameSchema(
    {
        "stage": pa.Column(str),
        "iteration": pa.Column(int, pa.Check.ge(0)),
        "split": pa.Column(str),
        "avg_reward": pa.Column(float, _unit),
        "success_rate": pa.Column(float, _unit),
        "mean_steps": pa.Column(float, pa.Check.ge(0.0)),
        "num_tasks": pa.Column(int, pa.Check.ge(0)),
        "extra": pa.Column(object),
    },
    strict=True,
    name="EvalSummary",
)

SCHEMAS: dict[str, pa.DataFrameSchema] = {
    "trajectories": TRAJECTORY_SCHEMA,
    "pairs": PAIR_SCHEMA,
    "eval": EVAL_SCHEMA,
}


def to_frame(records: Sequence[Trajectory | PreferencePair | EvalSummary], kind: str) -> pd.DataFrame:
    """Records -> validated frame (an empty list gives an empty frame with the schema's columns)."""
    schema = SCHEMAS[kind]
    if records:
        frame = pd.DataFrame([asdict(r) for r in records])
    else:
        frame = pd.DataFrame({name: pd.Series(dtype=object) for name in schema.columns})
    return validate(frame, kind, source="<in memory>")


def validate(frame: pd.DataFrame, kind: str, source: str) -> pd.DataFrame:
    """Validate ``frame`` against the schema ``kind``; the error names source, rows and fields."""
    schema = SCHEMAS[kind]
    if frame.empty:
        missing = [c for c in schema.columns if c not in frame.columns]
        if missing:
            raise RecordError(f"{source}: {schema.name} records lack the fields {missing}.")
        return frame
    frame = _normalise_nested(frame, kind)
    try:
        return schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        raise RecordError(_describe(exc, schema.name or kind, source)) from None


def _describe(exc: pa.errors.SchemaErrors, name: str, source: str) -> str:
    lines = [f"{source}: {len(exc.failure_cases)} problem(s) in {name} records:"]
    for _, case in exc.failure_cases.head(10).iterrows():
        row = case["index"]
        where = f"row {int(row)}" if pd.notna(row) else "all rows"
        field_name = case["column"] if pd.notna(case["column"]) else "(frame)"
        # Frame-level checks name the schema as the column and the field as the failure case.
        if case["check"] == "column_in_dataframe":
            lines.append(f"  field '{case['failure_case']}': missing (every {name} record needs it)")
            continue
        if case["check"] == "column_in_schema":
            lines.append(f"  field '{case['failure_case']}': not a {name} field (drop it)")
            continue
        value = repr(case["failure_case"])
        if len(value) > 120:
            value = value[:117] + "..."
        lines.append(f"  {where}, field '{field_name}': {case['check']} (got {value})")
    lines.append(
        "Fix or regenerate the file: the field list and rules are in eto_core/records.py "
        "(docs/pipeline.md, section Records, describes each record)."
    )
    return "\n".join(lines)


def _to_py(value: Any) -> Any:
    """Parquet gives nested lists back as numpy arrays of dicts; schemas check plain lists."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, list):
        return [_to_py(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_py(v) for k, v in value.items()}
    return value


def _normalise_nested(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    nested = {"trajectories": ["messages"], "pairs": ["prompt", "chosen", "rejected"], "eval": ["extra"]}[kind]
    frame = frame.copy()
    for col in nested:
        if col in frame.columns:
            frame[col] = frame[col].map(_to_py)
    for col, schema_col in SCHEMAS[kind].columns.items():
        if col in frame.columns and frame[col].dtype == object and str(schema_col.dtype) == "str":
            frame[col] = frame[col].astype("string").astype(object)
    return frame


def read_records(path: str | Path, kind: str) -> pd.DataFrame:
    """Read a local .parquet or .jsonl record file and validate it (errors name the row)."""
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif path.suffix in (".jsonl", ".json"):
            rows = []
            with path.open() as fh:
                for lineno, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise RecordError(
                            f"{path}: line {lineno} is not valid JSON ({exc.msg} at column {exc.colno}); "
                            "the file may be truncated: regenerate it or delete the line."
                        ) from None
            # No lines means no records: JSONL carries no column names to check then.
            frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(SCHEMAS[kind].columns))
        else:
            raise RecordError(f"{path}: unknown record file type '{path.suffix}'; use .parquet or .jsonl.")
    except RecordError:
        raise
    except Exception as exc:  # pyarrow raises many types for corrupt files
        raise RecordError(
            f"{path}: cannot be read as {path.suffix} ({type(exc).__name__}: {exc}); "
            "the file is corrupt or truncated: delete it and rerun the stage that writes it."
        ) from None
    return validate(frame, kind, source=str(path))


def write_records(frame: pd.DataFrame, path: str | Path, kind: str) -> None:
    """Validate, then write atomically (temp file + rename) so readers never see half a file."""
    path = Path(path)
    frame = validate(frame, kind, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".parquet":
        frame.to_parquet(tmp, index=False)
    else:
        # json.dumps, not DataFrame.to_json: pandas rounds floats to 10 digits, so a reward read
        # back from JSONL would differ from the one written (and so would every digest after it).
        with tmp.open("w") as fh:
            for row in frame.to_dict(orient="records"):
                fh.write(json.dumps(_to_py(row), ensure_ascii=False) + "\n")
    tmp.replace(path)


def frame_to_trajectories(frame: pd.DataFrame) -> list[Trajectory]:
    frame = _normalise_nested(frame, "trajectories")
    return [Trajectory(**row) for row in frame.to_dict(orient="records")]


def frame_to_pairs(frame: pd.DataFrame) -> list[PreferencePair]:
    frame = _normalise_nested(frame, "pairs")
    return [PreferencePair(**row) for row in frame.to_dict(orient="records")]
