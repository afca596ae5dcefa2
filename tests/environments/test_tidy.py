"""The built-in tidy environment: contract, splits, expert, reward grading, action rules."""

from __future__ import annotations

import pytest

from environments import ENV_NAMES, make_env
from environments.base import SPLITS, StepResult
from environments.check import check_env
from environments.tidy import DEFAULT_MAX_STEPS, TidyEnv, held_out_combos
from environments.tidy.expert import optimal_plan
from environments.tidy.world import EXAMPLE_WORLD, build_splits


@pytest.fixture(scope="module")
def env() -> TidyEnv:
    return TidyEnv()


def run(env: TidyEnv, task: str, actions: list[str]) -> StepResult:
    env.reset(task)
    result = None
    for action in actions:
        result = env.step(action)
    assert result is not None
    return result


def spread(ids: list[str], n: int) -> list[str]:
    return [ids[i * len(ids) // n] for i in range(min(n, len(ids)))]


def test_check_env_passes(env: TidyEnv) -> None:
    check_env(env, split_sample=10)


def test_registry() -> None:
    assert "tidy" in ENV_NAMES
    assert isinstance(make_env("tidy", train_size=3), TidyEnv)
    with pytest.raises(ValueError, match=r"'nope'.*tidy"):
        make_env("nope")


def test_splits_sizes_ids_and_determinism(env: TidyEnv) -> None:
    assert [len(env.tasks(s)) for s in SPLITS] == [1000, 100, 100, 50]
    assert env.tasks("train")[17] == "tidy-train-00017"
    other = TidyEnv()
    for split in SPLITS:
        assert env.tasks(split) == other.tasks(split)
        for task in spread(env.tasks(split), 10):
            assert env.reset(task) == other.reset(task)


def test_splits_are_disjoint_by_id_and_by_world(env: TidyEnv) -> None:
    ids = [t for s in SPLITS for t in env.tasks(s)]
    assert len(ids) == len(set(ids))
    signatures = [env.world(t).signature() for t in ids]
    assert len(signatures) == len(set(signatures))
    assert EXAMPLE_WORLD.signature() not in signatures


def test_held_out_combos(env: TidyEnv) -> None:
    held = held_out_combos()
    assert len(held) == 10
    for split in ("train", "dev", "seen"):
        for task in env.tasks(split):
            assert not env.world(task).combos() & held, task
    for task in env.tasks("unseen"):
        assert env.world(task).combos() & held, task
    assert not EXAMPLE_WORLD.combos() & held


def test_a_world_depends_on_its_id_not_on_split_sizes() -> None:
    small = TidyEnv(train_size=5, seen_size=5, unseen_size=5, dev_size=0)
    full = build_splits((("dev", 50), ("seen", 100), ("train", 1000), ("unseen", 100)))
    assert small.world("tidy-seen-00003") == full["seen"][3]
    assert small.tasks("dev") == []


def test_unknown_task_id(env: TidyEnv) -> None:
    for bad in ("tidy-train-01000", "tidy-test-00001", "tidy-train-7", "alfworld-train-00001", ""):
        with pytest.raises(ValueError, match="unknown task id"):
            env.reset(bad)


def test_expert_solves_a_sample_of_every_split(env: TidyEnv) -> None:
    tasks = [t for s in SPLITS for t in spread(env.tasks(s), 50)]
    assert len(tasks) == 200
    for task in tasks:
        actions = env.expert(task)
        assert len(env.expert_thoughts(task)) == len(actions)
        assert len(actions) <= env.max_steps - 5  # margin for a few agent mistakes
        result = run(env, task, actions)
        assert result.terminated and not result.truncated and result.info["success"], task
        assert 0.0 < result.reward <= 1.0


def test_lucky_agent_beats_expert_and_sloppy_agent_loses(env: TidyEnv) -> None:
    wins = 0
    for task in env.tasks("train")[:100]:
        expert = env.expert(task)
        expert_reward = run(env, task, expert).reward
        lucky = run(env, task, optimal_plan(env.world(task)))
        assert lucky.info["success"] and lucky.reward == 1.0
        assert lucky.reward >= expert_reward
        wins += lucky.reward > expert_reward
        # Same path, same reward: ties exist and are exact.
        assert run(env, task, expert).reward == expert_reward
        # A wasted step (an extra look) still succeeds but scores strictly lower.
        sloppy = run(env, task, ["look", *expert])
        assert sloppy.info["success"] and sloppy.reward < expert_reward
    assert wins > 50


def test_partial_credit(env: TidyEnv) -> None:
    task = next(t for t in env.tasks("train") if len(env.world(t).required) == 2)
    half = run(env, task, optimal_plan(env.world(task))[:4])
    assert not half.terminated and not half.info["success"]
    assert half.reward == pytest.approx(0.5)
    assert half.info["placed"] == 1


def test_invalid_actions_change_nothing(env: TidyEnv) -> None:
    task = env.tasks("train")[0]
    world = env.world(task)
    plan = optimal_plan(world)
    obj, source = plan[1].removeprefix("take ").split(" from ")
    elsewhere = next(r for r in world.receptacles if r != source)
    env.reset(task)
    invalid = [
        "xyzzy",
        "go to moon 1",
        f"take {obj} from {source}",  # not standing there yet
        f"put {obj} in {world.target}",  # not holding it
        "take",
        "",
    ]
    before = (env.step("look").observation, env.step("inventory").observation)
    for action in invalid:
        result = env.step(action)
        assert result.observation == "Nothing happens."
        assert result.info["valid_action"] is False
    assert (env.step("look").observation, env.step("inventory").observation) == before

    env.reset(task)
    env.step(f"go to {source}")
    assert env.step(f"take {obj} from {source}").info["valid_action"]
    env.step(f"go to {elsewhere}")
    at_elsewhere = env.step("look").observation
    # Hands are full, and a wrong receptacle name is not the current one.
    for action in (f"take {obj} from {source}", f"put {obj} in {source}", "put nothing 1 in x 1"):
        assert env.step(action).observation == "Nothing happens."
    assert env.step("look").observation == at_elsewhere
    assert env.step("inventory").observation == f"You are carrying: {obj}."


def test_action_parsing_is_forgiving_about_case_spacing_and_preposition(env: TidyEnv) -> None:
    task = env.tasks("train")[0]
    world = env.world(task)
    plan = optimal_plan(world)
    env.reset(task)
    assert env.step("  GO TO   " + plan[0].removeprefix("go to ") + ".").info["valid_action"]
    assert env.step(plan[1]).info["valid_action"]
    env.step(plan[2])
    put = plan[3]
    swapped = put.replace(" in ", " on ") if " in " in put else put.replace(" on ", " in ")
    assert env.step(swapped).info["placed"] == 1


def test_truncation_at_the_cap() -> None:
    env = TidyEnv(train_size=3, seen_size=1, unseen_size=1, dev_size=0, max_steps=7)
    env.reset("tidy-train-00001")
    for n in range(1, 7):
        result = env.step("look")
        assert not result.truncated and not result.terminated, n
    result = env.step("look")
    assert result.truncated and not result.terminated and not result.info["success"]
    assert result.reward == 0.0
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look")


def test_success_on_the_last_allowed_step_is_not_truncation() -> None:
    env = TidyEnv(train_size=20, seen_size=1, unseen_size=1, dev_size=0, max_steps=4)
    task = next(t for t in env.tasks("train") if len(env.world(t).required) == 1)
    result = run(env, task, optimal_plan(env.world(task)))
    assert result.terminated and not result.truncated


def test_prompt_texts(env: TidyEnv) -> None:
    instruction = env.task_instruction()
    for phrase in (
        "go to <receptacle>",
        "take <object> from <receptacle>",
        "put <object> in/on <receptacle>",
        "Thought:",
        "Action:",
        str(DEFAULT_MAX_STEPS),
    ):
        assert phrase in instruction
    example = env.one_shot_example()
    assert "Your task is to: " in example[0][0]
    assert all(r.startswith("Thought: ") and "\nAction: " in r for _, r in example)
    assert example == env.one_shot_example()  # fixed, so every prompt shows the same example
