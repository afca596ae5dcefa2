"""The ALFWorld adapter on the real game files: contract, splits, experts, episode rules, faults.

Needs the alfworld package and the game data (see conftest.py); skips with the reason if not.
Games are slow to load (0.5-2 s each on 2 cores), so the samples are small but cover every
task type.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("alfworld", reason="the alfworld package is not installed (pip install alfworld==0.4.2)")

from environments.alfworld.data import GAME_FILE, JSON_DIR, TASK_TYPES  # noqa: E402
from environments.alfworld.env import DEFAULT_MAX_STEPS, AlfworldEnv  # noqa: E402
from environments.alfworld.prompt import EXAMPLE_GAME  # noqa: E402
from environments.base import EnvError, StepResult  # noqa: E402
from environments.check import check_env  # noqa: E402


@pytest.fixture(scope="module")
def env(data_root: Path) -> Iterator[AlfworldEnv]:
    env = AlfworldEnv(data_root=data_root)
    yield env
    env.close()


def task_type(task_id: str) -> str:
    return task_id.split("/")[1].split("-")[0]


def one_per_type(ids: list[str]) -> list[str]:
    """The first task of every task type."""
    picked: dict[str, str] = {}
    for task in ids:
        picked.setdefault(task_type(task), task)
    return sorted(picked.values())


def play(env: AlfworldEnv, task: str, actions: list[str]) -> list[StepResult]:
    env.reset(task)
    return [env.step(action) for action in actions]


def test_check_env_passes_on_a_handful_of_tasks(data_root: Path) -> None:
    small = AlfworldEnv(data_root=data_root, train_size=12, seen_size=6, unseen_size=6)
    check_env(small, split_sample=1)  # one task per split: every check replays 5-7 episodes


def test_splits_sizes_disjoint_and_deterministic(env: AlfworldEnv, data_root: Path) -> None:
    train, seen, unseen = env.tasks("train"), env.tasks("seen"), env.tasks("unseen")
    assert (len(seen), len(unseen)) == (140, 134)
    assert len(train) > 3000
    assert env.tasks("dev") == []
    for split, ids in (("train", train), ("seen", seen), ("unseen", unseen)):
        assert ids == sorted(ids) and all(t.startswith(f"{split}/") for t in ids)
        assert {task_type(t) for t in ids} == TASK_TYPES
    games = [set(t.split("/", 1)[1] for t in ids) for ids in (train, seen, unseen)]
    assert not (games[0] & games[1] or games[0] & games[2] or games[1] & games[2])
    other = AlfworldEnv(data_root=data_root)
    assert [other.tasks(s) for s in ("train", "seen", "unseen")] == [train, seen, unseen]


def test_subsets_are_spread_over_task_types(data_root: Path, env: AlfworldEnv) -> None:
    small = AlfworldEnv(data_root=data_root, train_size=30, seen_size=12, unseen_size=12)
    for split, n in (("train", 30), ("seen", 12), ("unseen", 12)):
        ids = small.tasks(split)
        assert len(ids) == n and set(ids) <= set(env.tasks(split))
        assert {task_type(t) for t in ids[:6]} == TASK_TYPES  # any prefix is spread over the types
    # Any game of the split stays playable by id, not only the subset's.
    assert small.reset(env.tasks("seen")[1])[0]
    small.close()


def test_task_types_keep_only_those_games_in_every_split(data_root: Path, env: AlfworldEnv) -> None:
    picked = AlfworldEnv(data_root=data_root, task_types=["pick_and_place_simple"], train_size=20, seen_size=5)
    for split in ("train", "seen", "unseen"):
        ids = picked.tasks(split)
        assert ids and {task_type(t) for t in ids} == {"pick_and_place_simple"}
        assert set(ids) <= set(env.tasks(split))
    assert (len(picked.tasks("train")), len(picked.tasks("seen"))) == (20, 5)
    everything = [t for t in env.tasks("unseen") if task_type(t) == "pick_and_place_simple"]
    assert picked.tasks("unseen") == everything  # no size: every game of the type
    with pytest.raises(ValueError, match="unknown: pick_and_place_with_movable_recep"):
        AlfworldEnv(data_root=data_root, task_types=["pick_and_place_with_movable_recep"])
    with pytest.raises(ValueError, match="non-empty"):
        AlfworldEnv(data_root=data_root, task_types=[])


def test_unseen_ids_are_etos(env: AlfworldEnv, eto_unseen_ids: Path) -> None:
    """ETO's alfworld_gamefile_id.txt lists its 134 unseen games as "<task folder>/<trial>"."""
    eto = [line.strip() for line in eto_unseen_ids.read_text().splitlines() if line.strip()]
    assert len(eto) == len(set(eto)) == 134
    assert {t.removeprefix("unseen/") for t in env.tasks("unseen")} == set(eto)


def test_unknown_task_ids(env: AlfworldEnv) -> None:
    movable = "seen/pick_and_place_with_movable_recep-RemoteControl-Box-Shelf-214/trial_T20190908_042658_361588"
    for bad in ("", "seen", "test/" + env.tasks("seen")[0].split("/", 1)[1], movable, "tidy-train-00001"):
        with pytest.raises(ValueError, match="unknown task id"):
            env.reset(bad)


def test_experts_win_a_sample_of_every_split(env: AlfworldEnv) -> None:
    """One game per task type in seen and unseen (the PDDL planner's expert) and three
    training games (gt_traj.json): each expert's replay wins on its last step."""
    tasks = one_per_type(env.tasks("seen")) + one_per_type(env.tasks("unseen")) + env.tasks("train")[::1500]
    assert len(tasks) == 15
    for task in tasks:
        actions = env.expert(task)
        assert actions, (task, env.expert_skips.get(task))
        thoughts = env.expert_thoughts(task)
        assert thoughts is not None and len(thoughts) == len(actions)
        results = play(env, task, actions)
        assert [r.terminated for r in results] == [False] * (len(actions) - 1) + [True], task
        assert results[-1].info["success"] and results[-1].reward == 1.0
        assert not any(r.truncated for r in results)
        assert all(r.info["valid_action"] for r in results)
        assert all(r.reward == 0.0 for r in results[:-1])


def test_observations_match_the_recorded_expert_conversation(env: AlfworldEnv, data_root: Path) -> None:
    """gt_traj.json records what ALFWorld showed: our observations must be the same text
    (banner dropped from the first, "You arrive at loc N." from go to)."""
    for task in env.tasks("train")[100::1700]:
        trial = data_root / JSON_DIR / "train" / task.split("/", 1)[1]
        if not (trial / "gt_traj.json").is_file():
            pytest.skip("this copy of the data has no gt_traj.json")
        turns = json.loads((trial / "gt_traj.json").read_text())
        first, _ = env.reset(task)
        assert first == "\n".join(turns[0]["value"].split("\n\n")[1:])
        actions = [t["value"] for t in turns if t["from"] == "gpt"]
        shown = [t["value"] for t in turns if t["from"] == "human"][1:]
        assert [env.step(a).observation for a in actions] == shown


def test_one_shot_example_is_the_real_game(env: AlfworldEnv) -> None:
    assert EXAMPLE_GAME in env.tasks("train")
    example = env.one_shot_example()
    actions = [reply.split("\nAction: ")[1] for _, reply in example]
    assert all(reply.startswith("Thought: ") for _, reply in example)
    first, _ = env.reset(EXAMPLE_GAME)
    assert example[0][0] == first and "Your task is to: " in first
    results = [env.step(a) for a in actions]
    assert [r.observation for r in results[:-1]] == [o for o, _ in example[1:]]
    assert results[-1].terminated and results[-1].info["success"]
    assert env.expert(EXAMPLE_GAME) == actions  # the example is the game's expert
    assert env.one_shot_example() == example


def test_reset_gives_room_and_task_without_banner(env: AlfworldEnv) -> None:
    task = env.tasks("unseen")[0]
    observation, info = env.reset(task)
    assert observation.startswith("You are in the middle of a room.")
    assert "Welcome" not in observation and "\n\n" not in observation
    assert observation.endswith(f"\nYour task is to: {info['instruction']}")
    assert info["task_id"] == task and info["game_file"].endswith(GAME_FILE)
    assert "look" in info["admissible_commands"]
    assert env.reset(task) == (observation, info)


def test_invalid_actions_say_nothing_happens_and_change_nothing(env: AlfworldEnv) -> None:
    task = EXAMPLE_GAME
    env.reset(task)
    env.step("go to sidetable 2")
    before = (env.step("look").observation, env.step("inventory").observation)
    for action in ("xyzzy", "", "take cellphone 1 from safe 1", "put cellphone 1 in/on sidetable 2", "go to moon 1"):
        result = env.step(action)
        assert result.observation == "Nothing happens.", action
        assert result.info["valid_action"] is False and result.info["command"] is None
        assert not result.terminated and not result.truncated and result.reward == 0.0
    assert (env.step("look").observation, env.step("inventory").observation) == before
    assert env.step("take cellphone 1 from sidetable 2").info["valid_action"]


def test_action_variants_are_mapped_unless_strict(env: AlfworldEnv, data_root: Path) -> None:
    lead = ["go to sidetable 2", "Take cellphone 1 from sidetable 2.", "go to safe 1", "open safe 1"]
    results = play(env, EXAMPLE_GAME, [*lead, "put cellphone 1 in safe 1"])
    assert results[1].info["command"] == "take cellphone 1 from sidetable 2"
    assert results[-1].info["command"] == "put cellphone 1 in/on safe 1"
    assert results[-1].info["success"]

    strict = AlfworldEnv(data_root=data_root, strict_actions=True)
    results = play(strict, EXAMPLE_GAME, [*lead, "put cellphone 1 in safe 1"])
    assert results[1].observation == results[-1].observation == "Nothing happens."
    strict.close()


def test_truncation_at_the_cap_and_no_steps_after_the_end(data_root: Path) -> None:
    env = AlfworldEnv(data_root=data_root, max_steps=3)
    assert DEFAULT_MAX_STEPS == 40
    env.reset(EXAMPLE_GAME)
    assert [env.step("look").truncated for _ in range(3)] == [False, False, True]
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look")
    env.close()
    env.close()
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look")


def test_an_expert_longer_than_the_cap_is_skipped_with_its_reason(data_root: Path, env: AlfworldEnv) -> None:
    short = AlfworldEnv(data_root=data_root, max_steps=4)
    assert short.expert(EXAMPLE_GAME) is None and short.expert_thoughts(EXAMPLE_GAME) is None
    assert "takes 6 steps > max_steps 4" in short.expert_skips[EXAMPLE_GAME]
    short.close()


def corrupt_root(tmp_path: Path, data_root: Path, mangle: str) -> tuple[Path, Path]:
    """A data root whose only seen game has a broken game file; returns (root, game file)."""
    source = data_root / JSON_DIR / "valid_seen" / AlfworldEnv(data_root=data_root).tasks("seen")[0].split("/", 1)[1]
    root = tmp_path / "data"
    for split in ("train", "valid_unseen"):
        (root / JSON_DIR / split).mkdir(parents=True)
    trial = root / JSON_DIR / "valid_seen" / source.parent.name / source.name
    shutil.copytree(source, trial)
    game = trial / GAME_FILE
    data = json.loads(game.read_text())
    if mangle == "pddl":
        data["pddl_problem"] = "(define (problem broken"
        game.write_text(json.dumps(data))
    else:  # truncated in the middle; the tail still says solvable, so the game is listed
        text = json.dumps(data)
        game.write_text(text[: len(text) // 2] + '", "solvable": true}')
    return root, game


@pytest.mark.parametrize("mangle", ["pddl", "json"])
def test_a_corrupt_game_file_raises_env_error_naming_it(tmp_path: Path, data_root: Path, mangle: str) -> None:
    root, game = corrupt_root(tmp_path, data_root, mangle)
    env = AlfworldEnv(data_root=root)
    (task,) = env.tasks("seen")
    with pytest.raises(EnvError, match=str(game)):
        env.reset(task)
    with pytest.raises(EnvError, match=str(game)):
        env.expert(task)
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look")
    env.close()
    env.close()


def test_a_missing_data_root_says_how_to_get_the_data(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="alfworld-download"):
        AlfworldEnv(data_root=tmp_path)
