"""``sciworld``: ScienceWorld (Wang et al., 2022) through its own simulator, as ETO runs it.

- Splits: see :mod:`environments.sciworld.splits` (seen = dev variations, unseen = test
  variations, at most ``eval_per_type`` each; ``dev`` = the next ``eval_per_type`` dev
  variations, a selection split disjoint from both).
- First observation: the task description, a blank line, then the room the agent starts in
  (ScienceWorld's ``look around``).
- Reward: the running maximum of the simulator's score in [0, 1] (a failed task's negative
  score counts as 0), as ETO reports it; ``info["success"]`` = the task completed with full
  score. The episode terminates when the simulator marks the task completed (solved, or
  failed for good) and is truncated at the task type's step cap.
- Step caps per task type: ``DEFAULT_STEP_CAPS`` (our rule, stated there) or ETO's own caps
  (``step_caps: eto`` with ``eto_splits_dir``) or a dict.
- Expert: ScienceWorld's gold action sequence (``load(..., generateGoldPath=True)``) with rule
  thoughts (:mod:`environments.sciworld.expert`). The pipeline replays it through ``step`` and
  skips (and counts) variations whose gold path does not reach full score.
- Fast path: each ``step`` is one simulator step plus score/completion reads; the valid-action
  list ScienceWorld's Python ``step`` builds every call is never computed (benchmarks/
  sciworld_step.py measures both).
- Faults: one JVM per environment instance, heap capped (``heap``). If the JVM dies mid-episode
  the adapter starts a new one, reloads the variation, replays the episode's actions and checks
  that every replayed observation matches what the agent saw; then the step is applied as if
  nothing happened. If the replay diverges or the JVM keeps dying, it raises ``EnvError`` and
  the rollout engine retries the episode from scratch, so no trajectory is ever half-written.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from environments.base import Split, StepResult, TextEnv
from environments.sciworld.expert import thoughts_for
from environments.sciworld.jvm import DEFAULT_HEAP, DEFAULT_JVM_OPTIONS, Simulator, SimulatorDied, StepOutcome
from environments.sciworld.splits import (
    TASK_TYPES,
    Variations,
    atomic_write_json,
    build_splits,
    check_task_types,
    default_cache_dir,
    interleave,
    load_variations,
    parse_task_id,
    read_eto_step_caps,
    task_id,
)

log = logging.getLogger(__name__)

DEFAULT_STEP_CAPS: dict[str, int] = {
    "boil": 75,
    "change-the-state-of-matter-of": 65,
    "chemistry-mix": 35,
    "chemistry-mix-paint-secondary-color": 40,
    "chemistry-mix-paint-tertiary-color": 50,
    "find-animal": 20,
    "find-living-thing": 20,
    "find-non-living-thing": 15,
    "find-plant": 25,
    "freeze": 80,
    "grow-fruit": 150,
    "grow-plant": 110,
    "identify-life-stages-1": 65,
    "identify-life-stages-2": 30,
    "lifespan-longest-lived": 15,
    "lifespan-longest-lived-then-shortest-lived": 15,
    "lifespan-shortest-lived": 15,
    "measure-melting-point-known-substance": 50,
    "melt": 75,
    "power-component": 25,
    "power-component-renewable-vs-nonrenewable-energy": 40,
    "test-conductivity": 40,
    "test-conductivity-of-unknown-substances": 40,
    "use-thermometer": 40,
}
"""Our step caps: 1.5x the median gold-path length of the task type plus 5, rounded up to a
multiple of 5, at least 10 (gold lengths of 10 variations per type sampled across train/dev/
test by benchmarks/sciworld_gold_paths.py; table in docs/environments.md) — room for a few
detours without letting a lost agent run for hundreds of steps. A gold path longer than its
cap (a few long dev/test variations of boil, melt, freeze) is skipped as an expert."""

EXAMPLE_TASK = ("find-living-thing", "train", 0)
"""The one-shot example: the gold path of the first train variation of this task type."""

NOT_STARTED = "The task is over. Reset to start a new one."


def _sw_version() -> str:
    try:
        from scienceworld.version import __version__
    except ImportError as exc:  # the optional extra is missing: say how to get it
        raise ImportError(
            "environment 'sciworld' needs the scienceworld package: pip install -e '.[sciworld]' (and Java 17+)"
        ) from exc
    return str(__version__)


class SciWorldEnv(TextEnv):
    name = "sciworld"

    def __init__(
        self,
        task_types: list[str] | None = None,
        splits: str = "scienceworld",
        eto_splits_dir: str | None = None,
        eval_per_type: int = 10,
        train_per_type: int | None = None,
        step_caps: Mapping[str, int] | str | None = None,
        simplifications: str = "",
        heap: str = DEFAULT_HEAP,
        jvm_options: list[str] | None = None,
        cache_dir: str | None = None,
        max_restarts: int = 2,
    ) -> None:
        if eval_per_type < 1 or (train_per_type is not None and train_per_type < 1) or max_restarts < 0:
            raise ValueError("sciworld: eval_per_type and train_per_type must be >= 1, max_restarts >= 0")
        sw_version = _sw_version()
        self.task_types = check_task_types(task_types) if task_types else list(TASK_TYPES)
        self.split_mode = splits
        self.eto_dir = Path(eto_splits_dir) if eto_splits_dir else None
        self.eval_per_type = eval_per_type
        self.train_per_type = train_per_type
        self.simplifications = simplifications
        self.max_restarts = max_restarts
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.step_caps = self._resolve_caps(step_caps)
        # The cache keys see the simulator version and everything that changes episodes.
        self.version = f"1-sw{sw_version}-{simplifications or 'none'}"
        self._variation_cache = self.cache_dir / f"variations-{sw_version}.json"
        self._sim = Simulator(heap=heap, jvm_options=DEFAULT_JVM_OPTIONS if jvm_options is None else jvm_options)
        self._splits: dict[str, list[str]] | None = None
        self._gold: dict[str, list[str]] = {}
        self._example: list[tuple[str, str]] | None = None
        self.max_steps = max(self.step_caps[t] for t in self.task_types)
        self._task: tuple[str, int] | None = None
        self._actions: list[str] = []
        self._observations: list[str] = []
        self._steps = 0
        self._reward = 0.0
        self._over = True

    def _resolve_caps(self, step_caps: Mapping[str, int] | str | None) -> dict[str, int]:
        caps = dict(DEFAULT_STEP_CAPS)
        if step_caps == "eto":
            if self.eto_dir is None:
                raise ValueError("sciworld: step_caps 'eto' needs eto_splits_dir (the folder of ETO's index files)")
            caps.update(read_eto_step_caps(self.eto_dir))
        elif isinstance(step_caps, Mapping):
            for name, cap in step_caps.items():
                (t,) = check_task_types([name])
                if not isinstance(cap, int) or cap < 1:
                    raise ValueError(f"sciworld: step_caps[{name!r}] = {cap!r}; expected a positive integer")
                caps[t] = cap
        elif step_caps is not None:
            raise ValueError(f"sciworld: step_caps = {step_caps!r}; expected a mapping, 'eto' or null")
        return caps

    # --- splits ---------------------------------------------------------------------

    def _read_variations(self, task_type: str) -> dict[str, list[int]]:
        self._sim.load(task_type, 0, "", False)
        return self._sim.variations()

    def variations(self) -> Variations:
        return load_variations(self.task_types, self._variation_cache, self._read_variations)

    def _all_splits(self) -> dict[str, list[str]]:
        if self._splits is None:
            splits = build_splits(
                self.split_mode, self.task_types, variations=self.variations, eto_dir=self.eto_dir,
                eval_per_type=self.eval_per_type, train_per_type=self.train_per_type,
            )
            if self.split_mode == "scienceworld":
                var = self.variations()
                n = self.eval_per_type
                splits["dev"] = interleave({t: var[t]["dev"][n : 2 * n] for t in self.task_types})
            else:
                splits["dev"] = []
            self._splits = splits
        return self._splits

    def tasks(self, split: Split) -> list[str]:
        splits = self._all_splits()
        if split not in splits:
            raise ValueError(f"sciworld: unknown split {split!r}; known: {', '.join(splits)}")
        return list(splits[split])

    # --- episodes -------------------------------------------------------------------

    def _start(self, task_type: str, variation: int) -> str:
        self._sim.load(task_type, variation, self.simplifications, False)
        return self._sim.reset()

    def reset(self, task_id: str) -> tuple[str, dict[str, Any]]:
        task_type, variation = parse_task_id(task_id)
        try:
            room = self._start(task_type, variation)
            description = self._sim.task_description()
        except SimulatorDied:
            self._sim.close()  # one fresh JVM; a second failure is the rollout engine's to retry
            try:
                room = self._start(task_type, variation)
                description = self._sim.task_description()
            except SimulatorDied as exc:
                from environments.base import EnvError

                raise EnvError(f"sciworld: cannot start {task_id}: {exc}") from exc
        self._task = (task_type, variation)
        self.max_steps = self.step_caps[task_type]
        self._actions, self._observations = [], []
        self._steps, self._reward, self._over = 0, 0.0, False
        observation = f"{description}\n\n{room}"
        return observation, {"instruction": description, "task_type": task_type, "variation": variation}

    def _recover(self) -> None:
        """A fresh JVM in the same episode state, verified step by step against what the agent saw."""
        from environments.base import EnvError

        assert self._task is not None
        last: Exception | None = None
        for attempt in range(1, self.max_restarts + 1):
            self._sim.close()
            try:
                self._start(*self._task)
                for i, (action, seen) in enumerate(zip(self._actions, self._observations, strict=True)):
                    again = self._sim.step(action).observation
                    if again != seen:
                        raise EnvError(
                            f"sciworld: {task_id(*self._task)}: replay after a JVM restart diverged at step "
                            f"{i + 1} ({action!r}); the episode must restart"
                        )
                log.warning("sciworld %s: JVM restarted (attempt %d), %d steps replayed",
                            task_id(*self._task), attempt, len(self._actions))
                return
            except SimulatorDied as exc:
                last = exc
        raise EnvError(f"sciworld: {task_id(*self._task)}: JVM died {self.max_restarts + 1} times: {last}")

    def _simulate(self, action: str) -> StepOutcome:
        from environments.base import EnvError

        for _ in range(self.max_restarts + 1):
            try:
                return self._sim.step(action)
            except SimulatorDied as exc:
                log.warning("sciworld: %s", exc)
                self._recover()
        raise EnvError("sciworld: the JVM keeps dying on this step")

    def step(self, action: str) -> StepResult:
        if self._task is None:
            raise RuntimeError("sciworld: step() before reset()")
        if self._over:
            raise RuntimeError("sciworld: step() after the episode ended; call reset()")
        outcome = self._simulate(action)
        self._actions.append(action)
        self._observations.append(outcome.observation)
        self._steps += 1
        self._reward = max(self._reward, min(1.0, max(0.0, outcome.score)))
        success = outcome.completed and outcome.score >= 1.0 - 1e-9
        # A negative score means the task failed for good (e.g. focus on the wrong object);
        # ScienceWorld's own Python wrapper ends the episode there too.
        terminated = outcome.completed or outcome.score < 0
        truncated = not terminated and self._steps >= self.max_steps
        self._over = terminated or truncated
        info = {"success": success, "score": outcome.score, "steps": self._steps}
        return StepResult(outcome.observation, float(self._reward), terminated, truncated, info)

    # --- expert and prompt ----------------------------------------------------------

    def expert(self, task_id: str) -> list[str] | None:
        if task_id not in self._gold:
            task_type, variation = parse_task_id(task_id)
            self._sim.load(task_type, variation, self.simplifications, True)
            gold = self._sim.gold_actions()
            self._gold[task_id] = [] if (not gold or gold[0].startswith("ERROR")) else self._until_done(task_id, gold)
        return list(self._gold[task_id]) or None

    def _until_done(self, tid: str, gold: list[str]) -> list[str]:
        """The gold path cut where the simulator marks the task completed: some gold paths
        carry actions past that point, which an agent must not learn to take."""
        self._start(*parse_task_id(tid))
        for i, action in enumerate(gold):
            if self._sim.step(action).completed:
                return gold[: i + 1]
        return gold

    def expert_thoughts(self, task_id: str) -> list[str] | None:
        actions = self.expert(task_id)
        return thoughts_for(actions) if actions else None

    def task_instruction(self) -> str:
        return (
            "You are a helpful assistant who does science experiments in a simulated world of rooms, "
            "substances, living things and devices. Solve the task you are given by acting in the world.\n"
            "Actions (OBJ and LOC are things and places you can see):\n"
            "look around | look at OBJ | look in OBJ | inventory | task\n"
            "go to LOC | open OBJ | close OBJ | pick up OBJ | put down OBJ | move OBJ to OBJ\n"
            "pour OBJ in OBJ | dunk OBJ in OBJ | mix OBJ | activate OBJ | deactivate OBJ\n"
            "connect OBJ to OBJ | disconnect OBJ | use OBJ [on OBJ] | read OBJ | eat OBJ | flush OBJ\n"
            "focus on OBJ (marks the object the task is about: focusing on the wrong one fails the task)\n"
            "wait (ten steps of time pass) | wait1 (one step passes)\n"
            "If an action is ambiguous you are asked to choose; answer with the option's number.\n"
            "Respond with a Thought: ... line and then an Action: ... line."
        )

    def one_shot_example(self) -> list[tuple[str, str]]:
        if self._example is None:
            self._example = self._load_example()
        return list(self._example)

    def _load_example(self) -> list[tuple[str, str]]:
        import json

        path = self.cache_dir / f"one-shot-{self.version}.json"
        if path.exists():
            try:
                return [(str(o), str(a)) for o, a in json.loads(path.read_text())]
            except (OSError, ValueError, TypeError):
                log.warning("sciworld: one-shot example cache %s unreadable; rebuilding it", path)
        # A separate instance (its own JVM), so building the example never disturbs an
        # episode in progress on this one.
        helper = SciWorldEnv(
            task_types=[EXAMPLE_TASK[0]], simplifications=self.simplifications, cache_dir=str(self.cache_dir),
            heap=self._sim.heap, jvm_options=self._sim.jvm_options,
        )
        try:
            task_type, split, index = EXAMPLE_TASK
            tid = task_id(task_type, helper.variations()[task_type][split][index])
            actions, thoughts = helper.expert(tid) or [], helper.expert_thoughts(tid) or []
            observation, _ = helper.reset(tid)
            rounds: list[tuple[str, str]] = []
            for action, thought in zip(actions, thoughts, strict=True):
                rounds.append((observation, f"Thought: {thought}\nAction: {action}"))
                result = helper.step(action)
                observation = result.observation
                if result.terminated or result.truncated:
                    break
        finally:
            helper.close()
        atomic_write_json(path, rounds)
        return rounds

    def close(self) -> None:
        self._sim.close()
        self._task, self._over = None, True
