"""The agent-facing ALFWorld instruction and one-shot example, in ETO's ReAct style.

The example is one real training game (``EXAMPLE_GAME``) played by its expert; the adapter
builds it from the game files at run time (no game text is copied into this repository).
"""

from __future__ import annotations

from environments.alfworld.thoughts import expert_thoughts


def instruction(max_steps: int) -> str:
    return (
        "Interact with a household to solve a task. You are an agent in a household; at the "
        "start you are told what the room holds and what your task is. After each of your turns "
        "you see what your action did. First think about the situation and plan ahead, then act.\n"
        "\n"
        "The available actions are:\n"
        "1. go to {recep}\n"
        "2. take {obj} from {recep}\n"
        "3. put {obj} in/on {recep}\n"
        "4. open {recep}\n"
        "5. close {recep}\n"
        "6. use {obj} (toggle it: turn on a desklamp or a floorlamp)\n"
        "7. clean {obj} with {recep}\n"
        "8. heat {obj} with {recep}\n"
        "9. cool {obj} with {recep}\n"
        "10. examine {obj} or examine {recep}\n"
        "11. look\n"
        "12. inventory\n"
        "where {obj} and {recep} are objects and receptacles with their numbers, e.g. apple 1 or "
        "countertop 2. You can carry one object at a time.\n"
        'If the environment answers "Nothing happens.", your action was invalid: try another one. '
        f"You have at most {max_steps} actions.\n"
        "\n"
        "Your response should use the following format:\n"
        "\n"
        "Thought: <your thoughts>\n"
        "Action: <your next action>"
    )


EXAMPLE_GAME = "train/pick_and_place_simple-CellPhone-None-Safe-302/trial_T20190908_122723_141074"
"""Task id of the example game (a training game, so no evaluation game leaks into prompts)."""



def example_rounds(observations: list[str], actions: list[str], task: str) -> list[tuple[str, str]]:
    """(observation, "Thought: ...\nAction: ...") rounds from an expert episode: the observation
    before each action (the first one with the task line), the action, and its rule thought."""
    thoughts = expert_thoughts(actions, task)
    return [
        (observation, f"Thought: {thought}\nAction: {action}")
        for observation, action, thought in zip(observations, actions, thoughts, strict=True)
    ]
