"""The conformance checker passes a correct env and names the rule a broken one breaks."""

from __future__ import annotations

from typing import Any

import pytest

from environments.base import Split, StepResult, TextEnv
from environments.check import ConformanceError, check_env


class CounterEnv(TextEnv):
    """A minimal correct env: task ``<split>-<n>`` is solved by saying "inc" n+1 times."""

    name = "counter"
    max_steps = 10

    def __init__(self) -> None:
        self.goal = 0
        self.count = 0
        self.steps = 0

    def tasks(self, split: Split) -> list[str]:
        return [f"{split}-{n}" for n in range(4)]

    def reset(self, task_id: str) -> tuple[str, dict[str, Any]]:
        self.goal = int(task_id.rsplit("-", 1)[1]) + 1
        self.count = 0
        self.steps = 0
        return f"Count to {self.goal}.", {"instruction": f"say inc {self.goal} times"}

    def step(self, action: str) -> StepResult:
        self.steps += 1
        if action == "inc":
            self.count += 1
            observation = f"Count is {self.count}."
        else:
            observation = "Nothing happens."
        terminated = self.count >= self.goal
        truncated = not terminated and self.steps >= self.max_steps
        reward = float(min(1.0, self.count / self.goal))
        return StepResult(observation, reward, terminated, truncated, {"success": terminated})

    def expert(self, task_id: str) -> list[str] | None:
        return ["inc"] * (int(task_id.rsplit("-", 1)[1]) + 1)

    def task_instruction(self) -> str:
        return "Say inc. Respond with a Thought: ... line and then an Action: ... line."

    def one_shot_example(self) -> list[tuple[str, str]]:
        return [("Count to 1.", "Thought: one more.\nAction: inc")]


class OverlappingSplits(CounterEnv):
    def tasks(self, split: Split) -> list[str]:
        return ["shared-0"] if split in ("seen", "unseen") else super().tasks(split)


class NondeterministicTasks(CounterEnv):
    calls = 0

    def tasks(self, split: Split) -> list[str]:
        self.calls += 1
        return [f"{split}-{self.calls}"]


class BothFlags(CounterEnv):
    def step(self, action: str) -> StepResult:
        result = super().step(action)
        done = result.terminated or result.truncated
        return StepResult(result.observation, result.reward, done, done, result.info)


class NeverTruncates(CounterEnv):
    def step(self, action: str) -> StepResult:
        result = super().step(action)
        return StepResult(result.observation, result.reward, result.terminated, False, result.info)


class RewardOutOfRange(CounterEnv):
    def step(self, action: str) -> StepResult:
        result = super().step(action)
        return StepResult(
            result.observation, result.reward * 2, result.terminated, result.truncated, result.info
        )


class InvalidActionEnds(CounterEnv):
    def step(self, action: str) -> StepResult:
        if action != "inc":
            return StepResult("Bad action.", 0.0, True, False, {"success": False})
        return super().step(action)


class ExpertFails(CounterEnv):
    def expert(self, task_id: str) -> list[str] | None:
        return ["inc"]  # too short for every task but the first


class NoisyReset(CounterEnv):
    resets = 0

    def reset(self, task_id: str) -> tuple[str, dict[str, Any]]:
        self.resets += 1
        obs, info = super().reset(task_id)
        return f"{obs} (reset {self.resets})", info


class MissingInstruction(CounterEnv):
    def reset(self, task_id: str) -> tuple[str, dict[str, Any]]:
        obs, _ = super().reset(task_id)
        return obs, {}


class ExampleWithoutThought(CounterEnv):
    def one_shot_example(self) -> list[tuple[str, str]]:
        return [("Count to 1.", "inc")]


class ThoughtsMismatch(CounterEnv):
    def expert_thoughts(self, task_id: str) -> list[str] | None:
        return ["think"]


class CloseTwiceFails(CounterEnv):
    closed = False

    def close(self) -> None:
        if self.closed:
            raise RuntimeError("already closed")
        self.closed = True


def test_correct_env_passes() -> None:
    check_env(CounterEnv())


def test_env_without_expert_passes() -> None:
    class NoExpert(CounterEnv):
        def expert(self, task_id: str) -> list[str] | None:
            return None

    check_env(NoExpert())


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (OverlappingSplits, "share"),
        (NondeterministicTasks, "differs between two calls"),
        (BothFlags, "both True"),
        (NeverTruncates, "neither truncated nor terminated"),
        (RewardOutOfRange, r"reward must be a float in \[0, 1\]"),
        (InvalidActionEnds, "invalid action ended the episode"),
        (ExpertFails, "expert"),
        (NoisyReset, "two resets gave different first observations"),
        (MissingInstruction, "instruction"),
        (ExampleWithoutThought, "Thought:"),
        (ThoughtsMismatch, "expert_thoughts"),
        (CloseTwiceFails, "already closed"),
    ],
)
def test_broken_env_is_caught(broken: type[CounterEnv], message: str) -> None:
    with pytest.raises(ConformanceError, match=message):
        check_env(broken())


def test_conformance_error_is_an_assertion_error_naming_the_env() -> None:
    with pytest.raises(AssertionError, match="^counter: "):
        check_env(OverlappingSplits())
