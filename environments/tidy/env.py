"""``tidy``: the built-in household tidy-up environment (no data, no network).

Each task is a small room of 5-8 receptacles ("drawer 1", "fridge 1", ...) holding objects;
the agent must put 1-3 named object types in/on one target receptacle. Objects are only seen
after ``go to <receptacle>``, so an agent has to search, as in ALFWorld, in ReAct form.

Reward (returned on every step as the episode's value so far, in [0, 1])::

    reward = (placed / required) * min(1, optimal_steps / steps_taken) ** 0.5

``placed`` counts required object types currently in the target; ``optimal_steps`` is the
privileged shortest solution, 4 per object (go to it, take, go to target, put);
``steps_taken`` counts every step, invalid ones included. The square root keeps the
efficiency penalty gentle, so completing the task always dominates. The expert searches
without privileged knowledge and so usually scores below 1.0; an agent that happens to go
straight to the objects scores 1.0 and beats it, one that wastes steps scores below it, and
an agent that repeats the expert's path ties. ``info["success"]`` is True once every
required object is in place, which also terminates the episode.

Splits: ``tidy-<split>-<index:05d>`` ids; see :mod:`environments.tidy.world` for how worlds
are drawn and which (object, target) combinations only the unseen split asks for.
"""

from __future__ import annotations

from typing import Any

from environments.base import SPLITS, Split, StepResult, TextEnv
from environments.tidy.expert import expert_plan, optimal_steps
from environments.tidy.room import Room
from environments.tidy.world import EXAMPLE_WORLD, HELD_OUT_COMBOS, World, build_splits

DEFAULT_MAX_STEPS = 25
"""The expert's longest episode is 18 steps (3 objects, 6 wasted search visits): 25 leaves
room for a few agent mistakes without letting hopeless episodes run long."""


def held_out_combos() -> frozenset[tuple[str, str]]:
    """(object type, target receptacle type) pairs only unseen tasks ask for."""
    return HELD_OUT_COMBOS


def task_id(split: str, index: int) -> str:
    return f"tidy-{split}-{index:05d}"


class TidyEnv(TextEnv):
    name = "tidy"
    version = "2"  # 2: expert thoughts carry the search state

    def __init__(
        self,
        train_size: int = 1000,
        seen_size: int = 100,
        unseen_size: int = 100,
        dev_size: int = 50,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> None:
        sizes = {"train": train_size, "dev": dev_size, "seen": seen_size, "unseen": unseen_size}
        if any(n < 0 for n in sizes.values()) or max_steps < 1:
            raise ValueError(f"tidy: sizes must be >= 0 and max_steps >= 1, got {sizes}, {max_steps}")
        self.max_steps = max_steps
        self._worlds = build_splits(tuple(sorted(sizes.items())))
        self._room: Room | None = None
        self._steps = 0
        self._over = False

    # --- tasks -------------------------------------------------------------------------

    def tasks(self, split: Split) -> list[str]:
        if split not in SPLITS:
            raise ValueError(f"tidy: unknown split {split!r}; known: {', '.join(SPLITS)}")
        return [task_id(split, i) for i in range(len(self._worlds[split]))]

    def world(self, task_id: str) -> World:
        """The (immutable) world behind a task id; ValueError for an id of no split."""
        parts = task_id.split("-")
        if len(parts) == 3 and parts[0] == "tidy" and parts[1] in self._worlds and parts[2].isdigit():
            worlds = self._worlds[parts[1]]
            index = int(parts[2])
            if index < len(worlds) and task_id == f"tidy-{parts[1]}-{index:05d}":
                return worlds[index]
        raise ValueError(
            f"tidy: unknown task id {task_id!r}; expected 'tidy-<split>-<index:05d>' with split in "
            f"{', '.join(SPLITS)} and index below that split's size "
            f"({', '.join(f'{s}={len(w)}' for s, w in self._worlds.items())})"
        )

    # --- episode -----------------------------------------------------------------------

    def reset(self, task_id: str) -> tuple[str, dict[str, Any]]:
        world = self.world(task_id)
        self._room = Room.start(world)
        self._steps = 0
        self._over = False
        info = {
            "instruction": world.task_sentence(),
            "task_id": task_id,
            "optimal_steps": optimal_steps(world),
        }
        return self._room.initial_observation(), info

    def step(self, action: str) -> StepResult:
        room = self._room
        if room is None:
            raise RuntimeError("tidy: step() before reset()")
        if self._over:
            raise RuntimeError("tidy: step() after the episode ended; call reset()")
        observation, valid = room.apply(action)
        self._steps += 1
        placed = room.placed()
        required = len(room.world.required)
        optimal = optimal_steps(room.world)
        reward = (placed / required) * min(1.0, optimal / self._steps) ** 0.5
        terminated = placed == required
        truncated = not terminated and self._steps >= self.max_steps
        self._over = terminated or truncated
        info = {
            "success": terminated,
            "valid_action": valid,
            "placed": placed,
            "required": required,
            "steps": self._steps,
            "optimal_steps": optimal,
        }
        return StepResult(observation, float(reward), terminated, truncated, info)

    # --- expert and prompt -------------------------------------------------------------

    def expert(self, task_id: str) -> list[str]:
        return [action for _, action in expert_plan(self.world(task_id))]

    def expert_thoughts(self, task_id: str) -> list[str]:
        return [thought for thought, _ in expert_plan(self.world(task_id))]

    def task_instruction(self) -> str:
        return (
            "You are in a room with receptacles (like drawer 1 or table 1) holding objects "
            "(like apple 1). Put the objects named in the task in/on the target receptacle.\n"
            "You see what is at a receptacle only after you go to it. "
            "You can carry one object at a time.\n"
            "Actions:\n"
            "go to <receptacle>\n"
            "take <object> from <receptacle>\n"
            "put <object> in/on <receptacle>\n"
            "look\n"
            "inventory\n"
            "Use names with their numbers, e.g. take apple 1 from drawer 1. "
            "An invalid action does nothing and wastes a step. "
            f"You have at most {self.max_steps} steps; fewer steps score higher.\n"
            "Respond with a Thought: ... line and then an Action: ... line."
        )

    def one_shot_example(self) -> list[tuple[str, str]]:
        room = Room.start(EXAMPLE_WORLD)
        observation = room.initial_observation()
        rounds: list[tuple[str, str]] = []
        for thought, action in expert_plan(EXAMPLE_WORLD):
            rounds.append((observation, f"Thought: {thought}\nAction: {action}"))
            observation, _ = room.apply(action)
        return rounds

    def close(self) -> None:
        self._room = None
        self._over = False
