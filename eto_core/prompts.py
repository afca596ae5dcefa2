"""The agent-facing conversation format of the ETO paper (ReAct).

Prompt = the benchmark's instruction (user), "OK" (agent), the one-shot example as alternating
observation / agent turns, then the task's first observation. Every agent turn is
"Thought: ...\\nAction: ...", every later observation an "Observation: ..." user turn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from eto_core.records import Message

_ACTION_RE = re.compile(r"Action:\s*(.+)")


def agent_turn(thought: str, action: str) -> str:
    return f"Thought: {thought}\nAction: {action}"


def observation_turn(observation: str) -> str:
    return f"Observation: {observation}"


def build_prompt(
    instruction: str,
    example: Sequence[tuple[str, str]],
    first_observation: str,
    *,
    one_shot: bool = True,
) -> list[Message]:
    """The messages an agent sees before its first action on a task."""
    messages: list[Message] = [
        {"role": "user", "content": instruction},
        {"role": "assistant", "content": "OK"},
    ]
    if one_shot:
        for i, (obs, act) in enumerate(example):
            messages.append({"role": "user", "content": obs if i == 0 else observation_turn(obs)})
            messages.append({"role": "assistant", "content": act})
    messages.append({"role": "user", "content": first_observation})
    return messages


def parse_action(text: str) -> str | None:
    """The action of an agent turn: the first line after the last "Action:"; None if missing."""
    matches = _ACTION_RE.findall(text)
    if not matches:
        return None
    action = matches[-1].strip().splitlines()[0].strip()
    return action or None


INVALID_FORMAT_OBSERVATION = (
    "Invalid format. Answer with a line 'Thought: ...' followed by a line 'Action: ...'."
)
