"""Import ETO's published trajectory files (``{"id", "conversations": [{"from", "value"}]}``).

ETO's SFT data are expert trajectories in the FastChat format: alternating ``human`` / ``gpt``
turns, starting with the instruction and ending on an agent turn. They carry no reward: an
expert trajectory counts as a success with reward 1.0 unless the record has a ``reward`` field.

Used as a pipeline's expert data (``data.expert_file``, :func:`load_expert_file`), a file's
records must meet the explored trajectories of the same tasks in the same prompt, so three
things happen on import:

- ids: ETO names tasks its own way; each record's id becomes our task id (:func:`map_task_ids`):
  WebShop ``"<goal index>"`` -> ``webshop-<goal index>`` (both index WebShop's goal list);
  ScienceWorld ``"<task number>_<variation>"`` -> ``<task type>/<variation>`` through ETO's
  ``sciworld_taskname2id.json``; ALFWorld the record's ``game_file`` (ETO's construct_preference
  keys ALFWorld on it), else ``"<n>"`` -> line n of a game list (``alfworld_gamefile_id.txt``
  format), -> ``<split>/<task folder>/<trial>``. An id that already is our task id stays.
- prompt: one convention, ours. The record's prompt (ETO's instruction wording and its task
  turn) is replaced by the prompt our environment gives that task, the one exploration and
  evaluation use, so the expert (chosen) and the agent (rejected) share their prompt exactly.
  The record's task turn must state the task's instruction, so a wrong id mapping fails here,
  naming the record, instead of pairing an expert with another task's episode.
  (The other choice, exploring with the records' prompts, would train and evaluate the model on
  two different prompts, and tasks without a record would have none.)
- reward: ScienceWorld and ALFWorld experts count 1.0, as ETO's script takes them; elsewhere the
  record's ``reward`` (ETO's WebShop file has one), 1.0 without it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from environments.base import TextEnv
from eto_core.prompts import build_prompt
from eto_core.records import Message, RecordError, Trajectory

_ROLE = {"human": "user", "gpt": "assistant", "system": "system"}

EXPERT_REWARD_ONE = frozenset({"sciworld", "alfworld"})
"""Environments whose imported experts count reward 1.0 whatever the record says (ETO's
construct_preference.py does so; its WebShop branch reads the record's reward)."""

IMPORT_VERSION = 2
"""The import rules of :func:`load_expert_file` (2: ids mapped, prompts re-rendered, ETO's
reward rule); part of the expert stage's cache key for ``data.expert_file``."""


class PromptMismatch(RecordError):
    """An imported record whose task turn does not state the task its id maps to."""


@dataclass(frozen=True)
class EtoRecord:
    """One validated record of an ETO file."""

    index: int
    id: str
    messages: list[Message]
    reward: float | None
    """The record's own ``reward`` field, if it has one."""
    game_file: str | None
    """ALFWorld records: the game the trajectory plays."""


def _fail(path: Path, index: int, record_id: str, detail: str) -> RecordError:
    return RecordError(
        f"{path}: record {index} (id {record_id!r}): {detail}. ETO records are "
        '{"id": ..., "conversations": [{"from": "human"|"gpt", "value": "..."}]}, alternating human/gpt '
        "and ending on a gpt turn: fix the record or drop it."
    )


def _load_json(path: Path) -> list[Any]:
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
    return data


def read_eto_file(path: str | Path, *, num_prompt_messages: int = 3) -> list[EtoRecord]:
    """Read and validate an ETO JSON (list) or JSONL file; ids must be unique."""
    path = Path(path)
    out: list[EtoRecord] = []
    first_index: dict[str, int] = {}
    for index, rec in enumerate(_load_json(path)):
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
        reward = rec.get("reward")
        if reward is not None and (
            isinstance(reward, bool) or not isinstance(reward, (int, float)) or not 0.0 <= reward <= 1.0
        ):
            raise _fail(path, index, rid, f"'reward' is {reward!r}; expected a number in [0, 1]")
        if rid in first_index:  # after the record's own checks: a broken record is named for what breaks it
            raise RecordError(
                f"{path}: record {index} (id {rid!r}): duplicate id, record {first_index[rid]} has it too; an id "
                "names one task and its one expert trajectory: drop or rename one of them."
            )
        first_index[rid] = index
        game_file = rec.get("game_file")
        out.append(EtoRecord(index, rid, messages, None if reward is None else float(reward),
                             str(game_file) if game_file else None))
    return out


def _trajectory(task_id: str, env: str, split: str, messages: list[Message], num_prompt: int,
                reward: float) -> Trajectory:
    num_steps = sum(m["role"] == "assistant" for m in messages[num_prompt:])
    return Trajectory.from_expert(task_id, env, split, messages, num_prompt, reward, reward >= 1.0, num_steps)


def import_eto_file(
    path: str | Path,
    *,
    env: str,
    split: str = "train",
    num_prompt_messages: int = 3,
) -> list[Trajectory]:
    """Read an ETO JSON (list) or JSONL file as expert Trajectory records, ids and prompts as
    the file has them (``eto import``); :func:`load_expert_file` is the pipeline's import.

    ``num_prompt_messages`` is how many leading messages form the prompt (instruction, "OK",
    in-context example turns, task): 3 without an in-context example.
    """
    return [
        _trajectory(rec.id, env, split, rec.messages, num_prompt_messages, 1.0 if rec.reward is None else rec.reward)
        for rec in read_eto_file(path, num_prompt_messages=num_prompt_messages)
    ]


# -- ETO's ids -> our task ids --------------------------------------------------------------------
_SCIWORLD_ID = re.compile(r"(\d+)_(\d+)")
_ALFWORLD_FILES = ("game.tw-pddl", "traj_data.json", "initial_state.pddl")


class _Unmapped(ValueError):
    """An id that names no task of the environment (the message says why)."""


def read_id_file(path: str | Path, env_name: str) -> dict[str, str]:
    """ETO's id table for ``env_name``: ScienceWorld's ``sciworld_taskname2id.json`` (task name ->
    number) as number -> task name; for the others a list of names, one per line (ALFWorld's
    ``alfworld_gamefile_id.txt``: ``<task folder>/<trial>``), as line number (from 0) -> name."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecordError(f"{path}: cannot read the expert id file ({exc.strerror}); check data.expert_id_file.") from None
    if env_name == "sciworld":
        try:
            table = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}: not valid JSON ({exc.msg}); expected ETO's sciworld_taskname2id.json.") from None
        if not isinstance(table, dict) or not all(isinstance(v, int) for v in table.values()):
            raise RecordError(f"{path}: expected ETO's sciworld_taskname2id.json, a JSON object of task name -> number.")
        return {str(number): name for name, number in table.items()}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return {str(i): line for i, line in enumerate(lines)}


def _alfworld_game(game_file: str) -> str:
    """``<task folder>/<trial>`` of a game path, with or without the data root and the file."""
    parts = [p for p in game_file.strip().replace("\\", "/").split("/") if p]
    if parts and parts[-1] in _ALFWORLD_FILES:
        parts.pop()
    return "/".join(parts[-2:])


def _alfworld_task(env: TextEnv, game: str) -> str:
    from environments.alfworld.env import AlfworldEnv

    assert isinstance(env, AlfworldEnv)
    for split in ("train", "seen", "unseen"):  # a trial folder (a timestamp) names one game of one split
        try:
            env.game_file(f"{split}/{game}")
        except ValueError:
            continue
        return f"{split}/{game}"
    raise _Unmapped(f"game {game!r} is not a playable game of any split under {env.root}")


def _task_id(rec: EtoRecord, env: TextEnv, table: dict[str, str] | None) -> str:
    rid = rec.id.strip()
    if env.name == "webshop" and rid.isdigit():
        return f"webshop-{int(rid)}"
    if env.name == "sciworld" and (m := _SCIWORLD_ID.fullmatch(rid)):
        if table is None:
            raise _Unmapped("ScienceWorld ids '<task number>_<variation>' need ETO's sciworld_taskname2id.json: "
                            "set data.expert_id_file")
        if m.group(1) not in table:
            raise _Unmapped(f"task number {m.group(1)} is not in the id file")
        from environments.sciworld.splits import canonical_task_type, task_id

        return task_id(canonical_task_type(table[m.group(1)]), int(m.group(2)))
    if env.name == "alfworld":
        if rec.game_file:
            return _alfworld_task(env, _alfworld_game(rec.game_file))
        if rid.isdigit():
            if table is None:
                raise _Unmapped("ALFWorld ids '<n>' need a 'game_file' field or a game list (one "
                                "'<task folder>/<trial>' per line, line n for id n): set data.expert_id_file")
            if rid not in table:
                raise _Unmapped(f"the id file has no line {rid} (it lists {len(table)} games)")
            return _alfworld_task(env, _alfworld_game(table[rid]))
    return rid  # already one of our task ids, or unknown: reset says which


def map_task_ids(path: str | Path, records: Sequence[EtoRecord], env: TextEnv, *,
                 id_file: str | Path | None = None) -> list[str]:
    """Our task id for each record (see the module doc); two records of one task are refused."""
    table = read_id_file(id_file, env.name) if id_file is not None else None
    out: list[str] = []
    first: dict[str, EtoRecord] = {}
    for rec in records:
        try:
            task = _task_id(rec, env, table)
        except _Unmapped as exc:
            raise RecordError(f"{path}: record {rec.index} (id {rec.id!r}): unknown id for environment "
                              f"'{env.name}': {exc}.") from None
        if task in first:
            raise RecordError(
                f"{path}: record {rec.index} (id {rec.id!r}) and record {first[task].index} (id {first[task].id!r}) "
                f"both name task {task!r}; a task has one expert trajectory: drop one of them."
            )
        first[task] = rec
        out.append(task)
    return out


# -- the prompt: ours ----------------------------------------------------------------------------
def _words(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _short(text: str, limit: int = 200) -> str:
    """``text`` on one line, its middle elided: a task turn states the task at its start or end."""
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[: limit // 3]} ... {text[-(2 * limit) // 3 :]}"


def expert_reward(env_name: str, rec: EtoRecord) -> float:
    if env_name in EXPERT_REWARD_ONE:
        return 1.0
    return 1.0 if rec.reward is None else rec.reward


def load_expert_file(
    path: str | Path,
    make_env: Callable[[], TextEnv],
    *,
    one_shot: bool,
    id_file: str | Path | None = None,
    limit: int | None = None,
    split: str = "train",
    num_prompt_messages: int = 3,
) -> list[Trajectory]:
    """The pipeline's expert trajectories from an ETO file: ids mapped to our task ids, each
    prompt re-rendered as our environment gives that task (with its one-shot example when
    ``one_shot``), rewards by ETO's rule; the first ``limit`` records (all for None).

    Every id is mapped and checked for duplicates; the first ``limit`` tasks are started in the
    environment, which refuses an id that names none of its tasks.
    """
    path = Path(path)
    records = read_eto_file(path, num_prompt_messages=num_prompt_messages)
    env = make_env()
    try:
        tasks = map_task_ids(path, records, env, id_file=id_file)
        out: list[Trajectory] = []
        for rec, task in list(zip(records, tasks, strict=True))[:limit]:
            where = f"{path}: record {rec.index} (id {rec.id!r} -> task {task!r})"
            try:
                first_obs, info = env.reset(task)
            except Exception as exc:  # the env's own refusal names the id rule
                raise RecordError(f"{where}: unknown id: environment '{env.name}' has no such task ({exc}).") from None
            task_turn = rec.messages[num_prompt_messages - 1]["content"]
            instruction = str(info["instruction"])
            if f" {_words(instruction)} " not in f" {_words(task_turn)} ":  # whole words: "desk" is not "desk 1"
                raise PromptMismatch(
                    f"{where}: prompt mismatch: the record's task turn does not state the task's instruction. "
                    f"Record: {_short(task_turn)!r}; task {task}: {_short(instruction)!r}. The id names another "
                    "task than the record plays: check the id mapping (data.expert_id_file) and that the "
                    "environment's data is the data the file was made with."
                )
            prompt = build_prompt(env.task_instruction(), env.one_shot_example() if one_shot else [], first_obs,
                                  one_shot=one_shot)
            out.append(_trajectory(task, env.name, split, prompt + rec.messages[num_prompt_messages:], len(prompt),
                                   expert_reward(env.name, rec)))
        return out
    finally:
        env.close()


def expert_file_task_ids(path: str | Path, make_env: Callable[[], TextEnv], *,
                         id_file: str | Path | None = None) -> list[str]:
    """Our task ids of every record of an ETO file (for the split-overlap check)."""
    records = read_eto_file(path)
    env = make_env()
    try:
        return map_task_ids(path, records, env, id_file=id_file)
    finally:
        env.close()
