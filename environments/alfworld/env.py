"""``alfworld``: ALFWorld's text household tasks (json_2.1.1 games), as the ETO paper plays them.

Data: a folder holding ``json_2.1.1`` (see :mod:`environments.alfworld.data`), given as
``data_root``, as ``archive_dir`` (the ``alfworld_<split>.tgz`` archives, extracted once into
``cache_dir``, default ``~/.cache/eto/alfworld``), or through ALFWorld's ``ALFWORLD_DATA``
variable. Online, the official files come with ALFWorld's documented step::

    pip install alfworld==0.4.2
    export ALFWORLD_DATA=~/alfworld-data && alfworld-download

Splits: ``train`` (3,554 games in the shared data), ``seen`` = valid_seen (140) and
``unseen`` = valid_unseen (134), ETO's in- and out-of-distribution test sets; no ``dev`` split
(carve one from train). Task ids are ``<split>/<task folder>/<trial>``, sorted by path;
``train_size`` / ``seen_size`` / ``unseen_size`` keep an evenly spread subset with the task
types interleaved (see :func:`_subset`); ``task_types`` keeps only games of those types (of
:data:`~environments.alfworld.data.TASK_TYPES`) in every split, before the sizes apply.

Episode: the first observation is the room and "Your task is to: ..." without TextWorld's
welcome banner; ``go to`` feedback loses its "You arrive at loc N." prefix (both as ETO does);
an action that is not admissible (after :mod:`environments.alfworld.actions`' variant rule)
gets "Nothing happens." and changes nothing. Reward is 1.0 once the game is won, else 0.0;
winning terminates, the ``max_steps``-th step (ETO: 40) truncates.

Experts: ``gt_traj.json`` where the data has it (every training game of the shared data),
else ALFWorld's PDDL-planner expert (fast-downward's plan from the initial state), replayed
once to check that it wins. ALFWorld's hand-coded expert (``alfworld.agents.expert``) is not
used: it issues "move X to Y", which the json_2.1.1 grammar does not have, and then falls back
to random admissible commands. An expert longer than ``max_steps`` or one that does not win
gives None; the reason is logged and kept in ``expert_skips``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from environments.alfworld import prompt
from environments.alfworld.actions import resolve_action
from environments.alfworld.data import (
    GAME_FILE,
    SPLIT_DIRS,
    TASK_TYPES,
    game_dir,
    list_games,
    read_recorded_expert,
    resolve_data_root,
)
from environments.alfworld.game import INVALID_OBSERVATION, GameSession, clean_observation, split_intro
from environments.alfworld.thoughts import expert_thoughts
from environments.base import SPLITS, EnvError, Split, StepResult, TextEnv

log = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 40
"""ETO's cap for ALFWorld (eval_agent/configs/task/alfworld.json)."""


@dataclass(frozen=True)
class ExpertPlan:
    actions: tuple[str, ...]
    task: str
    source: str
    """"gt_traj" or "planner"."""


def _task_type(game: str) -> str:
    """The task type a ``<task folder>/<trial>`` game belongs to (its folder's first field)."""
    return game.split("-", 1)[0]


def _subset(ids: tuple[str, ...], n: int | None) -> list[str]:
    """``n`` evenly spaced games, the six task types interleaved; all games in path order for None.

    Folders sort by task type, so the first n games would all be one type: evenly spaced
    picks keep every type in proportion, and interleaving the types keeps any prefix of the
    subset balanced too (the pipeline uses the first N tasks of a split for each stage).
    """
    if n is None:
        return list(ids)
    picks = [ids[i * len(ids) // n] for i in range(min(n, len(ids)))]
    by_type: dict[str, list[str]] = {}
    for game in picks:
        by_type.setdefault(_task_type(game), []).append(game)
    groups = [by_type[t] for t in sorted(by_type)]
    return [group[r] for r in range(max(map(len, groups), default=0)) for group in groups if r < len(group)]


_EXAMPLES: dict[str, list[tuple[str, str]]] = {}
"""The one-shot example per data root, built once per process."""


class AlfworldEnv(TextEnv):
    name = "alfworld"
    version = "1"

    def __init__(
        self,
        data_root: str | os.PathLike[str] | None = None,
        archive_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        train_size: int | None = None,
        seen_size: int | None = None,
        unseen_size: int | None = None,
        task_types: list[str] | None = None,
        strict_actions: bool = False,
        verify_experts: bool = False,
    ) -> None:
        """``*_size``: keep that many evenly spread games of the split, types interleaved (None: all).
        ``task_types``: keep only games of these types in every split (None: all six).
        ``strict_actions``: only exact admissible commands are valid (ETO's own env).
        ``verify_experts``: also replay gt_traj.json experts once before returning them (the
        planner's are always replayed); the pipeline's expert replay checks them anyway."""
        sizes = {"train": train_size, "seen": seen_size, "unseen": unseen_size}
        if max_steps < 1 or any(n is not None and n < 1 for n in sizes.values()):
            raise ValueError(f"alfworld: max_steps and split sizes must be >= 1, got {max_steps}, {sizes}")
        if task_types is not None:
            unknown = sorted(set(task_types) - TASK_TYPES)
            if unknown or not task_types:
                raise ValueError(
                    f"alfworld: task_types {list(task_types)} must be a non-empty list of "
                    f"{', '.join(sorted(TASK_TYPES))}; unknown: {', '.join(unknown) or 'none'}"
                )
        self._types = frozenset(task_types) if task_types is not None else TASK_TYPES
        self.root = resolve_data_root(data_root, archive_dir, cache_dir)
        self.max_steps = max_steps
        self._sizes = sizes
        self._strict = strict_actions
        self._verify = verify_experts
        self._session: GameSession | None = None
        self._planner: GameSession | None = None  # experts never disturb the running episode
        self._admissible: tuple[str, ...] = ()
        self._steps = 0
        self._over = True
        self._experts: dict[str, ExpertPlan | None] = {}
        self.expert_skips: dict[str, str] = {}
        """Task id -> why expert() returned None."""

    # --- tasks -------------------------------------------------------------------------

    def tasks(self, split: Split) -> list[str]:
        if split == "dev":
            return []
        if split not in SPLIT_DIRS:
            raise ValueError(f"alfworld: unknown split {split!r}; known: {', '.join(SPLITS)}")
        games = tuple(g for g in list_games(self.root, split) if _task_type(g) in self._types)
        return [f"{split}/{game}" for game in _subset(games, self._sizes[split])]

    def game_file(self, task_id: str) -> Path:
        """The game file of a task id of any split (subsets included); ValueError otherwise."""
        split, _, game = task_id.partition("/")
        if split in SPLIT_DIRS and game in list_games(self.root, split):
            return game_dir(self.root, split, game) / GAME_FILE
        raise ValueError(
            f"alfworld: unknown task id {task_id!r}; expected '<split>/<task folder>/<trial>' with split "
            f"in {', '.join(SPLIT_DIRS)} naming a playable game under {self.root}"
        )

    # --- episode -----------------------------------------------------------------------

    def reset(self, task_id: str) -> tuple[str, dict[str, Any]]:
        game_file = self.game_file(task_id)
        if self._session is None:
            self._session = GameSession()
        self._over = True  # until the new game is running
        state = self._session.start(game_file)
        try:
            observation, task = split_intro(state.feedback)
        except ValueError as exc:
            raise EnvError(f"alfworld: game {game_file} has an unexpected intro: {exc}") from exc
        self._admissible, self._steps, self._over = state.admissible, 0, False
        info = {
            "instruction": task,
            "task_id": task_id,
            "game_file": str(game_file),
            "admissible_commands": list(state.admissible),
        }
        return observation, info

    def step(self, action: str) -> StepResult:
        session = self._session
        if session is None or session.game_file is None:
            raise RuntimeError("alfworld: step() before reset()")
        if self._over:
            raise RuntimeError("alfworld: step() after the episode ended; call reset()")
        command = resolve_action(action, self._admissible, strict=self._strict)
        if command is None:
            # The engine would answer the same without touching the state; skipping it saves
            # recomputing the admissible commands (~50 ms).
            observation, won = INVALID_OBSERVATION, False
        else:
            state = session.step(command)
            observation, won, self._admissible = clean_observation(state.feedback), state.won, state.admissible
        self._steps += 1
        truncated = not won and self._steps >= self.max_steps
        self._over = won or truncated
        info = {
            "success": won,
            "valid_action": command is not None,
            "command": command,
            "admissible_commands": list(self._admissible),
            "steps": self._steps,
        }
        return StepResult(observation, 1.0 if won else 0.0, won, truncated, info)

    # --- expert and prompt -------------------------------------------------------------

    def expert(self, task_id: str) -> list[str] | None:
        plan = self.expert_plan(task_id)
        return None if plan is None else list(plan.actions)

    def expert_thoughts(self, task_id: str) -> list[str] | None:
        plan = self.expert_plan(task_id)
        return None if plan is None else expert_thoughts(plan.actions, plan.task)

    def expert_plan(self, task_id: str) -> ExpertPlan | None:
        """The task's expert (cached per instance), or None with the reason in expert_skips."""
        if task_id not in self._experts:
            plan, reason = self._find_expert(task_id)
            if plan is None:
                log.info("alfworld: no expert for %s: %s", task_id, reason)
                self.expert_skips[task_id] = reason
            self._experts[task_id] = plan
        return self._experts[task_id]

    def _find_expert(self, task_id: str) -> tuple[ExpertPlan | None, str]:
        game_file = self.game_file(task_id)
        recorded = read_recorded_expert(game_file.parent)
        if recorded is not None:
            plan = ExpertPlan(recorded.actions, recorded.task, "gt_traj")
        else:
            state = self._planner_session().start(game_file, plan=True)
            if not state.plan:
                return None, "the PDDL planner found no plan"
            plan = ExpertPlan(state.plan, split_intro(state.feedback)[1], "planner")
        if len(plan.actions) > self.max_steps:
            return None, f"the {plan.source} expert takes {len(plan.actions)} steps > max_steps {self.max_steps}"
        if plan.source == "planner" or self._verify:
            won_at = self._replay(game_file, plan.actions)
            if won_at is None:
                return None, f"the {plan.source} expert's {len(plan.actions)} actions do not win the game"
            if won_at < len(plan.actions):  # the game ends at the win: so must the plan
                plan = ExpertPlan(plan.actions[:won_at], plan.task, plan.source)
        return plan, ""

    def _replay(self, game_file: Path, actions: tuple[str, ...]) -> int | None:
        """Number of actions after which the game is won, or None."""
        session = self._planner_session()
        state = session.start(game_file)
        for n, action in enumerate(actions, start=1):
            if action not in state.admissible:
                return None
            state = session.step(action)
            if state.won:
                return n
        return None

    def _planner_session(self) -> GameSession:
        if self._planner is None:
            self._planner = GameSession()
        return self._planner

    def task_instruction(self) -> str:
        return prompt.instruction(self.max_steps)

    def one_shot_example(self) -> list[tuple[str, str]]:
        key = str(self.root)
        if key not in _EXAMPLES:
            # A separate instance plays the example, so an episode in progress here is untouched.
            player = AlfworldEnv(data_root=self.root, max_steps=max(self.max_steps, 40))
            try:
                actions = player.expert(prompt.EXAMPLE_GAME)
                if not actions:
                    raise EnvError(f"alfworld: the one-shot example game {prompt.EXAMPLE_GAME} has no winning expert")
                first, info = player.reset(prompt.EXAMPLE_GAME)
                observations = [first]
                observations += [player.step(a).observation for a in actions[:-1]]
                _EXAMPLES[key] = prompt.example_rounds(observations, actions, info["instruction"])
            finally:
                player.close()
        return list(_EXAMPLES[key])

    def close(self) -> None:
        for session in (self._session, self._planner):
            if session is not None:
                session.close()
        self._session = self._planner = None
        self._over = True
