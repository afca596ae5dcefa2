"""The text-environment interface every benchmark adapter implements.

String in, string out, as in Gymnasium's text environments and ScienceWorld's ``step``:
the step cap lives inside the environment, and ``terminated`` (the task ended: solved or
failed for good) is kept apart from ``truncated`` (the step cap cut the episode short).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Literal

Split = Literal["train", "seen", "unseen", "dev"]
SPLITS: tuple[Split, ...] = ("train", "seen", "unseen", "dev")


@dataclass(frozen=True)
class StepResult:
    observation: str
    reward: float
    """Reward so far for the episode, in [0, 1] (ETO scores a trajectory by its final reward)."""
    terminated: bool
    truncated: bool
    info: dict[str, Any] = field(default_factory=dict)


class EnvError(RuntimeError):
    """An environment fault (crash, failed load) as opposed to an agent mistake."""


class TextEnv(abc.ABC):
    """One episode at a time; create one instance per concurrent episode."""

    name: str
    max_steps: int
    version: str = "1"
    """Bump when tasks, observations, rewards or expert demonstrations change: it is part of
    the pipeline's cache keys, so cached trajectories of the old behaviour are not reused."""

    @abc.abstractmethod
    def tasks(self, split: Split) -> list[str]:
        """Task ids of a split; deterministic, and disjoint from every other split."""

    @abc.abstractmethod
    def reset(self, task_id: str) -> tuple[str, dict[str, Any]]:
        """Start the task; returns the first observation and info with ``instruction``."""

    @abc.abstractmethod
    def step(self, action: str) -> StepResult:
        """Apply one agent action; an invalid action changes nothing and says so."""

    @abc.abstractmethod
    def expert(self, task_id: str) -> list[str] | None:
        """Expert actions that solve the task, or None where the benchmark has none."""

    @abc.abstractmethod
    def task_instruction(self) -> str:
        """The benchmark's agent-facing instruction (rules and action space)."""

    @abc.abstractmethod
    def one_shot_example(self) -> list[tuple[str, str]]:
        """An in-context example as (observation, "Thought: ...\\nAction: ...") rounds; the
        first observation includes the task description."""

    def expert_thoughts(self, task_id: str) -> list[str] | None:
        """Optional thought per expert action; a generic thought is used where None."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook: most envs hold nothing to release
        """Release resources (processes, files); safe to call twice."""
