from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from environments.check import check_env
from environments.sciworld import SciWorldEnv
from environments.sciworld.splits import parse_task_id
from eto_core.prompts import agent_turn
from eto_core.rollout import run_episodes

from .conftest import TASK_TYPES, needs_simulator

pytestmark = needs_simulator  # every test here plays games on the simulator


def test_conformance(sw_env: SciWorldEnv) -> None:
    check_env(sw_env, split_sample=2)


def test_splits_are_deterministic_disjoint_and_follow_scienceworld(sw_env: SciWorldEnv, sw_cache: Path) -> None:
    splits = {s: sw_env.tasks(s) for s in ("train", "seen", "unseen", "dev")}
    ids = [t for ts in splits.values() for t in ts]
    assert len(ids) == len(set(ids))
    assert [len(splits[s]) for s in ("train", "seen", "unseen", "dev")] == [15, 9, 9, 9]
    var = sw_env.variations()
    for tid in splits["seen"]:
        t, v = parse_task_id(tid)
        assert v in var[t]["dev"]
    for tid in splits["unseen"]:
        t, v = parse_task_id(tid)
        assert v in var[t]["test"]
    # A second instance reads the variation cache, never the JVM, and agrees.
    again = SciWorldEnv(task_types=TASK_TYPES, eval_per_type=3, train_per_type=5, cache_dir=str(sw_cache))
    assert {s: again.tasks(s) for s in splits} == splits
    assert again._sim.starts == 0
    again.close()


def test_gold_paths_score_as_in_scienceworld_itself(sw_env: SciWorldEnv) -> None:
    from scienceworld import ScienceWorldEnv

    reference = ScienceWorldEnv("", envStepLimit=1000)
    try:
        for t in TASK_TYPES:
            for tid in (sw_env.tasks("seen")[TASK_TYPES.index(t) * 3], sw_env.tasks("unseen")[TASK_TYPES.index(t) * 3]):
                task_type, variation = parse_task_id(tid)
                reference.load(task_type, variation, "", generateGoldPath=True)
                gold = reference.get_gold_action_sequence()
                reference.reset()
                for action in gold:
                    _, _, _, info = reference.step(action)
                expected = info["score"] / 100

                # ScienceWorld's own gold path, replayed through the adapter: same score.
                sw_env.reset(tid)
                for action in gold:
                    result = sw_env.step(action)
                    if result.terminated or result.truncated:
                        break
                assert result.info["score"] == pytest.approx(expected), tid
                assert result.reward == pytest.approx(max(0.0, expected))
                # The adapter's expert (a gold path generated in its own JVM: the gold agent's
                # choices, e.g. which animal to fetch, may differ) ends exactly on completion.
                expert = sw_env.expert(tid)
                assert expert
                sw_env.reset(tid)
                for i, action in enumerate(expert):
                    result = sw_env.step(action)
                    assert result.terminated == (i == len(expert) - 1)
                assert result.info["score"] == pytest.approx(expected), tid
    finally:
        reference.close()


def test_invalid_action_changes_nothing(sw_env: SciWorldEnv) -> None:
    tid = sw_env.tasks("seen")[0]
    sw_env.reset(tid)
    before = sw_env.step("look around").observation
    bad = sw_env.step("fly to the moon")
    assert "No known action" in bad.observation and not bad.terminated
    assert sw_env.step("look around").observation == before


def test_wrong_focus_fails_the_task(sw_env: SciWorldEnv) -> None:
    tid = sw_env.tasks("seen")[0]  # find-animal: focusing on a non-animal fails for good
    sw_env.reset(tid)
    result = sw_env.step("focus on air")
    assert result.terminated and not result.info["success"]
    assert result.info["score"] < 0 and result.reward >= 0.0


class GoldPolicy:
    """Plays the gold path, and SIGKILLs the episode's JVM before the given step."""

    name = "gold"
    model_uri = "gold"

    def __init__(self, gold: list[str], env_box: list[SciWorldEnv], kill_before: int) -> None:
        self.gold, self.env_box, self.kill_before = gold, env_box, kill_before
        self.calls = 0

    def generate(self, conversations):  # type: ignore[no-untyped-def]
        if self.calls == self.kill_before:
            pid = self.env_box[0]._sim.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        action = self.gold[self.calls]
        self.calls += 1
        return [agent_turn("next", action)]


def test_a_killed_jvm_is_restarted_and_the_episode_completes_intact(sw_cache: Path) -> None:
    envs: list[SciWorldEnv] = []

    def make() -> SciWorldEnv:
        env = SciWorldEnv(task_types=["find-animal"], eval_per_type=2, train_per_type=2, cache_dir=str(sw_cache))
        envs.append(env)
        return env

    probe = make()
    tid = probe.tasks("seen")[0]
    gold = probe.expert(tid)
    probe.close()
    assert gold and len(gold) > 4
    envs.clear()
    policy = GoldPolicy(gold, envs, kill_before=3)
    (traj,) = run_episodes(
        make, [tid], policy, env_name="sciworld", split="seen", source="eval", iteration=0,
        one_shot=False, batch_size=1, progress=False,
        step_timeout=60.0,  # as the pipeline runs it: each simulator call on a watchdog thread
    )
    assert traj.terminate_reason == "success" and traj.success and traj.reward == 1.0
    assert traj.num_steps == len(gold)
    turns = traj.messages[traj.num_prompt_messages :]
    actions = [m["content"].split("Action: ")[1] for m in turns if m["role"] == "assistant"]
    assert actions == gold  # every step kept, none repeated: the restart was invisible
    assert len(envs) == 1 and envs[0]._sim.starts == 2
    assert envs[0]._sim.pid is None  # closed by the engine, JVM gone


def test_close_leaves_no_jvm(sw_cache: Path) -> None:
    env = SciWorldEnv(task_types=["find-animal"], eval_per_type=1, cache_dir=str(sw_cache))
    env.reset(env.tasks("seen")[0])
    pid = env._sim.pid
    assert pid is not None
    env.close()
    env.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
