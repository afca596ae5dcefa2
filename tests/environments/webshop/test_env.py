"""The webshop env on a synthetic catalogue: contract, determinism, splits, expert, step cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from environments.base import SPLITS
from environments.check import check_env
from environments.webshop import DEFAULT_MAX_STEPS, WebShopEnv
from environments.webshop.expert import search_keywords
from environments.webshop.synthetic import read_meta


def spread(ids: list[str], n: int) -> list[str]:
    return [ids[i * len(ids) // n] for i in range(min(n, len(ids)))]


def test_check_env_passes(env: WebShopEnv) -> None:
    check_env(env, split_sample=10)


def test_default_constructor_generates_the_default_catalogue(cache_dir: Path) -> None:
    env = WebShopEnv(cache_dir=cache_dir)
    assert env.max_steps == DEFAULT_MAX_STEPS == 10
    assert [len(env.tasks(s)) for s in ("seen", "dev", "unseen")] == [100, 50, 100]
    assert len(env.tasks("train")) > 400
    check_env(env, split_sample=3)
    again = WebShopEnv(cache_dir=cache_dir)  # found on disk, not generated again
    assert again.version == env.version and again.tasks("train") == env.tasks("train")


def test_resets_are_deterministic_across_instances(env: WebShopEnv, small_dir: Path, cache_dir: Path) -> None:
    other = WebShopEnv(small_dir, seen_size=30, dev_size=10, unseen_size=30, cache_dir=cache_dir)
    assert other.version == env.version
    for split in SPLITS:
        assert other.tasks(split) == env.tasks(split)
        for task in spread(env.tasks(split), 5):
            assert other.reset(task) == env.reset(task)
            actions = env.expert(task)
            assert actions is not None
            assert [other.step(a).observation for a in actions] == [env.step(a).observation for a in actions]


def test_splits_are_disjoint_and_hold_out_categories(env: WebShopEnv, small_dir: Path) -> None:
    ids = [t for s in SPLITS for t in env.tasks(s)]
    assert len(ids) == len(set(ids))
    assert [len(env.tasks(s)) for s in ("seen", "dev", "unseen")] == [30, 10, 30]
    meta = read_meta(small_dir)
    assert meta is not None
    held = set(meta["held_out_categories"])
    assert held == {"garden", "pets"}
    for split in ("train", "dev", "seen"):
        assert all(env.goal(t).category not in held for t in env.tasks(split)), split
    assert all(env.goal(t).category in held for t in env.tasks("unseen"))
    # The training goals cover every category that is not held out
    assert {env.goal(t).category for t in env.tasks("train")} == set(meta["categories"]) - held


def test_task_ids(env: WebShopEnv) -> None:
    assert env.tasks("train")[0].startswith("webshop-")
    n = len(env.catalogue.goals)
    for bad in (f"webshop-{n}", "webshop-01", "webshop--1", "tidy-train-00001", "webshop-", ""):
        with pytest.raises(ValueError, match="unknown task id"):
            env.reset(bad)
    with pytest.raises(ValueError, match="unknown split"):
        env.tasks("test")  # type: ignore[arg-type]


def test_expert_wins_a_sample_of_every_split(env: WebShopEnv) -> None:
    tasks = [t for s in SPLITS for t in spread(env.tasks(s), 25)]
    assert len(tasks) == 85  # 25 each from train, seen and unseen, all 10 of dev
    for task in tasks:
        actions = env.expert(task)
        thoughts = env.expert_thoughts(task)
        assert actions is not None and thoughts is not None and len(thoughts) == len(actions)
        assert len(actions) <= env.max_steps - 4  # room for a few agent mistakes
        env.reset(task)
        results = [env.step(a) for a in actions]
        assert all(r.info["valid_action"] for r in results)
        assert results[-1].terminated and results[-1].info["success"] and results[-1].reward == 1.0, task


def test_search_puts_the_goal_product_first(env: WebShopEnv) -> None:
    # What makes the catalogue learnable: the instruction's words find the product at the top.
    goals = env.catalogue.goals
    first = sum(1 for g in goals if env.search(search_keywords(g))[0].asin == g.asin)
    assert first / len(goals) >= 0.95


def test_truncation_at_the_cap(small_dir: Path, cache_dir: Path) -> None:
    env = WebShopEnv(small_dir, max_steps=3, seen_size=5, dev_size=0, unseen_size=5, cache_dir=cache_dir)
    task = env.tasks("train")[0]
    env.reset(task)
    goal = env.goal(task)
    assert not env.step(f"search[{goal.request}]").truncated
    assert not env.step(f"click[{goal.asin}]").truncated
    last = env.step("click[Description]")
    assert last.truncated and not last.terminated and last.reward == 0.0 and not last.info["success"]
    # Buying on the last allowed step is termination, not truncation
    env.reset(task)
    env.step(f"search[{goal.request}]")
    env.step(f"click[{goal.asin}]")
    last = env.step("click[Buy Now]")
    assert last.terminated and not last.truncated
    # This goal needs more than 3 steps with its options: no scripted path under this cap
    if goal.options:
        assert env.expert(task) is None


def test_prompt_texts(env: WebShopEnv) -> None:
    instruction = env.task_instruction()
    for phrase in ("search[keywords]", "click[value]", "Buy Now", "Thought:", "Action:", str(env.max_steps)):
        assert phrase in instruction
    example = env.one_shot_example()
    assert example[0][0].startswith("WebShop [SEP] Instruction: [SEP] ")
    assert all(r.startswith("Thought: ") and "\nAction: " in r for _, r in example)
    assert example[-1][1].endswith("Action: click[Buy Now]")
    assert example == env.one_shot_example()
    example_asins = {"B0EXAMPL01", "B0EXAMPL02", "B0EXAMPL03"}
    assert not example_asins & set(env.catalogue.index_of)


def test_version_follows_the_data(env: WebShopEnv, tmp_path: Path, cache_dir: Path) -> None:
    from environments.webshop.synthetic import generate

    generate(tmp_path, products=200, seed=2)
    other = WebShopEnv(tmp_path, seen_size=5, dev_size=5, unseen_size=5, cache_dir=cache_dir)
    assert other.version != env.version and other.version.split("+")[0] == env.version.split("+")[0]


def test_synthetic_flag_generates_into_an_empty_folder_and_checks_it(tmp_path: Path, cache_dir: Path) -> None:
    env = WebShopEnv(tmp_path / "shop", synthetic=True, synthetic_products=150, synthetic_seed=3,
                     seen_size=5, dev_size=5, unseen_size=5, cache_dir=cache_dir)  # fmt: skip
    assert (tmp_path / "shop" / "items_shuffle.json").is_file() and env.tasks("unseen")
    with pytest.raises(ValueError, match="150 products"):
        WebShopEnv(
            tmp_path / "shop", synthetic=True, synthetic_products=300, synthetic_seed=3, cache_dir=cache_dir
        )
