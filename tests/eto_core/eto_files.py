"""Write ETO-format expert files the way ETO published them, from our environments' experts.

ETO's SFT records (HF agent-eto/eto-sft-trajectory) open with ETO's own instruction text, "OK",
then the task as ETO's environment showed it; agent turns are "Thought: ...\\nAction: ...", and
observations "Observation: ...". Their ids are ETO's: WebShop goal indices, ScienceWorld
"<task number>_<variation>", ALFWorld a counter beside the record's game_file. The wording here
is ours (a short paraphrase), deliberately not our environments' prompt: the importer must
re-render it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from environments.base import TextEnv

ETO_STYLE_INSTRUCTION = {
    "webshop": "You are web shopping.\nFollow the instruction, one action per round: search[keywords] or "
    "click[value].\nYour response should use the following format:\n\nThought: I think ...\nAction: click[something]",
    "alfworld": "Interact with a household to solve a task. Your output must strictly follow the format "
    "\"Thought: your thoughts.\\nAction: your next action\".",
    "sciworld": "You are a helpful assistant to do some scientific experiment in an environment.",
    "tidy": "Tidy the room as the task says. Answer with 'Thought: ...' and 'Action: ...'.",
}


def eto_task_turn(env_name: str, first_observation: str, instruction: str) -> str:
    """The first human turn after "OK", as ETO's environments render the task."""
    if env_name == "webshop":
        return f"Observation:\n{first_observation}"
    if env_name == "alfworld":
        return f"Here is your task. {first_observation}"
    if env_name == "sciworld":
        return instruction
    return first_observation


def eto_record(env: TextEnv, task: str, record_id: Any, **extra: Any) -> dict[str, Any]:
    """``env``'s expert on ``task`` as an ETO record with id ``record_id`` (and ``extra`` fields)."""
    actions = env.expert(task)
    assert actions, f"{task} has no expert"
    thoughts = env.expert_thoughts(task) or ["I should do the next step."] * len(actions)
    first, info = env.reset(task)
    turns = [("human", ETO_STYLE_INSTRUCTION[env.name]), ("gpt", "OK"),
             ("human", eto_task_turn(env.name, first, str(info["instruction"])))]
    for thought, action in zip(thoughts, actions, strict=True):
        result = env.step(action)
        turns += [("gpt", f"Thought: {thought}\nAction: {action}"), ("human", f"Observation: {result.observation}")]
        if result.terminated or result.truncated:
            break
    turns.pop()  # ETO's records end on the agent's last turn
    return {"id": record_id, "conversations": [{"from": f, "value": v} for f, v in turns], **extra}


def write_eto_file(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(records, indent=1))
    return path


def alfworld_eto_record(env: Any, task: str, record_id: Any, **extra: Any) -> dict[str, Any]:
    """An ALFWorld game's recorded expert (its gt_traj.json, the conversation ALFWorld showed) as
    an ETO record: the banner dropped from the task turn, thoughts from our rule-based writer."""
    game_dir = env.game_file(task).parent
    recorded = json.loads((game_dir / "gt_traj.json").read_text())
    thoughts = env.expert_thoughts(task)
    assert thoughts, f"{task} has no expert"
    intro = recorded[0]["value"].split("\n\n", 1)[1]
    turns = [("human", ETO_STYLE_INSTRUCTION["alfworld"]), ("gpt", "OK"), ("human", f"Here is your task. {intro}")]
    agent = [t["value"] for t in recorded if t["from"] == "gpt"]
    observations = [t["value"] for t in recorded[1:] if t["from"] == "human"]
    for i, (thought, action) in enumerate(zip(thoughts, agent, strict=True)):
        turns.append(("gpt", f"Thought: {thought}\nAction: {action}"))
        if i < len(observations) and i < len(agent) - 1:
            turns.append(("human", f"Observation: {observations[i]}"))
    return {"id": record_id, "conversations": [{"from": f, "value": v} for f, v in turns], **extra}
