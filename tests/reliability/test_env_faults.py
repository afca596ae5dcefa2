"""Environments that crash or hang mid-episode, on the real `tidy` environment.

The policy replays the expert's own turns, so every episode that the environment lets finish
is a success: a fault shows as a retry (same trajectory as a clean run) or, when it persists,
as an `env_error` episode that pair construction skips and evaluation leaves out of the
averages, never as a model failure.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

from environments.base import EnvError, StepResult
from environments.tidy import TidyEnv
from eto_core.evaluation import summarize
from eto_core.experts import collect_expert
from eto_core.pairs import build_pairs
from eto_core.prompts import agent_turn
from eto_core.records import Message, Trajectory
from eto_core.rollout import run_episodes
from tests.reliability.conftest import ROWS

KW = {"train_size": 8, "seen_size": 2, "unseen_size": 2, "dev_size": 2, "max_steps": 40}


class ExpertPolicy:
    """Plays each task's expert turns, found from the task id the first observation names."""

    name = "expert-replay"
    model_uri = "expert://replay"

    def __init__(self, env: TidyEnv, tasks: Sequence[str]) -> None:
        self.turns = {t: [agent_turn(th, a) for th, a in zip(env.expert_thoughts(t), env.expert(t), strict=True)]
                      for t in tasks}
        self.first_obs = {t: env.reset(t)[0] for t in tasks}

    def generate(self, conversations: Sequence[list[Message]]) -> list[str | None]:
        out: list[str | None] = []
        for conv in conversations:
            task = next(t for t, obs in self.first_obs.items() if obs in conv[2]["content"])
            done = sum(m["role"] == "assistant" for m in conv[3:])
            out.append(self.turns[task][done])
        return out


class FaultyTidy(TidyEnv):
    """TidyEnv whose step raises or blocks (until closed) where the shared ``plan`` says."""

    def __init__(self, plan: dict[tuple[str, int], list[str]], **kw: Any) -> None:
        super().__init__(**kw)
        self.plan = plan
        self.current = ""
        self.steps = 0
        self._closed = threading.Event()

    def reset(self, task_id: str) -> tuple[str, dict[str, Any]]:
        self.current, self.steps = task_id, 0
        return super().reset(task_id)

    def step(self, action: str) -> StepResult:
        self.steps += 1
        todo = self.plan.get((self.current, self.steps))
        if todo:
            fault = todo.pop(0)
            if fault == "crash":
                raise EnvError(f"simulated simulator crash on {self.current} step {self.steps}")
            self._closed.wait()  # "hang": blocks until the engine gives up and closes us
            raise EnvError("closed while hanging")
        return super().step(action)

    def close(self) -> None:
        self._closed.set()
        super().close()


def _run(plan: dict[tuple[str, int], list[str]], tasks: list[str], **kw: Any) -> list[Trajectory]:
    policy = ExpertPolicy(TidyEnv(**KW), tasks)
    return run_episodes(lambda: FaultyTidy(plan, **KW), tasks, policy, env_name="tidy", split="train",
                        source="explore", iteration=1, one_shot=False, batch_size=4, progress=False, **kw)


def _without_ids(trajs: list[Trajectory]) -> list[tuple[str, float, int, str]]:
    return [(t.task_id, t.reward, t.num_steps, t.terminate_reason) for t in trajs]


def test_crashes_and_hangs_are_retried_and_the_trajectories_match_a_clean_run() -> None:
    tasks = TidyEnv(**KW).tasks("train")[:4]
    clean = _run({}, tasks, step_timeout=5.0)
    plan = {(tasks[0], 2): ["crash"], (tasks[1], 1): ["hang"], (tasks[2], 3): ["crash", "hang"]}
    faulty = _run(plan, tasks, step_timeout=0.5, max_env_retries=2)
    assert all(t.success for t in clean)
    assert [t.messages for t in faulty] == [t.messages for t in clean]
    assert _without_ids(faulty) == _without_ids(clean)
    assert not any(plan.values())  # every planned fault fired
    ROWS.append({"area": "environment faults", "test": "crash and hang retried",
                 "fault": "tidy env raising in step (2 episodes) and blocking forever in step (2), "
                          "one episode hit twice",
                 "error": "each faulty environment closed and replaced (a hang after env.step_timeout_s), the "
                          "episode restarted from scratch; all 4 trajectories identical to a clean run's",
                 "lost": "nothing"})


def test_a_persistent_fault_is_an_env_error_that_pairs_skip_and_evaluation_does_not_count() -> None:
    tasks = TidyEnv(**KW).tasks("train")[:3]
    plan = {(tasks[1], 1): ["crash"] * 3}
    trajs = _run(plan, tasks, step_timeout=5.0, max_env_retries=2)
    assert [t.terminate_reason for t in trajs] == ["success", "env_error", "success"]
    failed = trajs[1]
    assert failed.reward == 0.0 and re.search(r"after 3 attempt\(s\): EnvError: simulated simulator crash",
                                              failed.messages[-1]["content"])
    experts, _ = collect_expert(lambda: TidyEnv(**KW), tasks, env_name="tidy", split="train", one_shot=False,
                                progress=False)
    # Make the others lose to the expert so pairs exist: only the env_error one is left out.
    for t in (trajs[0], trajs[2]):
        t.reward = 0.0
    pairs, stats = build_pairs(experts, trajs, iteration=1)
    assert {p.task_id for p in pairs} == {tasks[0], tasks[2]} and stats.unusable == 1
    summary = summarize(trajs, stage="eval", iteration=1, split="train")
    assert summary.num_tasks == 2 and summary.extra["env_errors"] == 1.0
    ROWS.append({"area": "environment faults", "test": "persistent fault",
                 "fault": "tidy env raising on the first step of one task on every attempt",
                 "error": f"recorded as env_error with the fault as its last message ('{failed.messages[-1]['content']}'); "
                          "pair construction skipped it (unusable: 1); evaluation counted it in env_errors, "
                          "not in the reward or success averages",
                 "lost": "that one episode, counted and explained"})
