"""ETO's published expert data through the pipeline, end to end (issue 24): an ETO-format file
written here -> the expert stage's import -> exploration by the tiny model -> pairs.

The file names tasks ETO's way and words its prompt ETO's way; pairs exist only if the import
mapped every id to the task exploration played and re-rendered the prompt exploration used. The
untrained model fails every task, so every pair is a lose pair: the expert's turns chosen, the
agent's rejected, under the agent's own prompt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from environments.alfworld.data import JSON_DIR, default_cache_dir, prepare_data
from environments.webshop import WebShopEnv
from environments.webshop.synthetic import generate
from eto_core import stages as S
from eto_core.config import Recipe, load_recipe
from eto_core.eto_format import EtoRecord, RecordError, load_expert_file, map_task_ids
from eto_core.pairs import response_turns
from eto_core.records import Trajectory
from eto_core.storage import ArtifactRef, ArtifactStore
from tests.eto_core.eto_files import alfworld_eto_record, eto_record, write_eto_file

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
ALFWORLD_ARCHIVES = SHARED / "alfworld"
ETO_UNSEEN_GAMES = SHARED / "eto_splits" / "alfworld_gamefile_id.txt"

# The prompts of WebShop and ALFWorld run to ~1,000 tokens of the tiny tokenizer: room for them.
LONG_CONTEXT = ["model.tiny.max_position_embeddings=4096", "explore.max_context_tokens=4096",
                "explore.max_new_tokens=12"]


def _recipe(tmp_path: Path, *overrides: str) -> Recipe:
    return load_recipe(ROOT / "recipes" / "mini.yaml", [f"storage.root={tmp_path / 'artifacts'}", *overrides])


def _explore_and_pair(recipe: Recipe, tmp_path: Path) -> tuple[ArtifactStore, dict[str, S.StageResult]]:
    store = S.make_store(recipe, tmp_path / "state")
    expert = S.expert_stage(recipe, store, progress=False)
    model = S.model_init_stage(recipe, store, expert.ref)
    explored = S.rollout_stage(recipe, store, model.ref, stage="explore", split="train", iteration=1,
                               gen=recipe.explore, progress=False)
    pairs = S.pairs_stage(recipe, store, expert.ref, explored.ref, 1)
    return store, {"expert": expert, "model": model, "explore": explored, "pairs": pairs}


def _check_lose_pairs(store: ArtifactStore, stages: dict[str, S.StageResult], records: dict[str, dict[str, Any]],
                      ) -> list[Trajectory]:
    """Every explored episode made a lose pair or tied: the file's expert chosen, the agent's turns
    rejected, under the prompt the agent explored with. Returns the explored trajectories."""
    explored = S.read_trajectories(store, stages["explore"].ref)
    pairs = {p.task_id: p for p in S.read_pairs(store, stages["pairs"].ref)}
    metrics = stages["pairs"].metrics
    assert S.num_pairs(stages["pairs"]) > 0, metrics
    assert metrics["pairs_no_expert"] == 0 and metrics["pairs_lose"] + metrics["pairs_tie"] == len(explored)
    for agent in explored:
        if agent.task_id not in pairs:
            continue
        pair = pairs[agent.task_id]
        assert pair.kind == "lose" and pair.chosen_reward > pair.rejected_reward == agent.reward
        assert pair.prompt == agent.messages[: agent.num_prompt_messages]
        expert_turns = [c["value"] for c in records[agent.task_id]["conversations"][3:]]
        assert [m["content"] for m in pair.chosen] == expert_turns  # the file's trajectory, ETO's thoughts
        assert pair.rejected == response_turns(agent)[: len(pair.rejected)]
    return explored


def test_tidy_expert_file_gives_lose_pairs(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "data.train_tasks=4", f"data.expert_file={tmp_path / 'tidy_sft.json'}")
    env = S.env_factory(recipe)()
    records = {t: eto_record(env, t, t) for t in env.tasks("train")[:4]}
    write_eto_file(tmp_path / "tidy_sft.json", list(records.values()))
    store, stages = _explore_and_pair(recipe, tmp_path)
    _check_lose_pairs(store, stages, records)


def test_explore_with_the_one_shot_example_train_without_it(tmp_path: Path) -> None:
    """ETO's convention (data.one_shot_in_training: false): exploration sees the example, the
    expert data and the pairs do not."""
    recipe = _recipe(tmp_path, "data.train_tasks=3", f"data.expert_file={tmp_path / 'tidy_sft.json'}",
                     "env.one_shot=true", "data.one_shot_in_training=false", *LONG_CONTEXT)
    env = S.env_factory(recipe)()
    records = {t: eto_record(env, t, t) for t in env.tasks("train")[:3]}
    write_eto_file(tmp_path / "tidy_sft.json", list(records.values()))
    store, stages = _explore_and_pair(recipe, tmp_path)
    experts = S.read_trajectories(store, stages["expert"].ref)
    assert all(t.num_prompt_messages == 3 for t in experts)
    explored = S.read_trajectories(store, stages["explore"].ref)
    assert all(t.num_prompt_messages > 3 for t in explored)  # explored with the example
    pairs = S.read_pairs(store, stages["pairs"].ref)
    assert pairs and all(len(p.prompt) == 3 and p.prompt == experts[0].messages[:2] + p.prompt[2:] for p in pairs)
    by_task = {t.task_id: t for t in explored}
    for pair in pairs:
        agent = by_task[pair.task_id]
        assert pair.prompt[2] == agent.messages[agent.num_prompt_messages - 1]  # the task turn, example dropped
        assert pair.kind == "lose" and pair.rejected == response_turns(agent)[: len(pair.rejected)]


def test_no_pairs_because_no_expert_matched_is_not_called_a_tie(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "data.train_tasks=3", f"data.expert_file={tmp_path / 'other_tasks.json'}")
    env = S.env_factory(recipe)()
    others = env.tasks("train")[20:23]  # valid tasks, but not the ones exploration plays
    write_eto_file(tmp_path / "other_tasks.json", [eto_record(env, t, t) for t in others])
    store, stages = _explore_and_pair(recipe, tmp_path)
    assert S.num_pairs(stages["pairs"]) == 0 and stages["pairs"].metrics["pairs_no_expert"] == 3
    with pytest.raises(ValueError, match="no failure/success pairs because no expert matched: of 3 explored "
                       r"episodes, 3 had no expert trajectory .*other_tasks\.json.* name none of the explored tasks"):
        S.dpo_stage(recipe, store, stages["model"].ref, stages["pairs"].ref, 1)


def test_webshop_expert_file_with_etos_goal_ids_gives_lose_pairs(tmp_path: Path) -> None:
    generate(tmp_path / "shop", products=300, seed=1)
    kwargs = (f"{{data_dir: {tmp_path / 'shop'}, cache_dir: {tmp_path / 'cache'}, seen_size: 10, dev_size: 5, "
              "unseen_size: 10, max_steps: 3}")
    recipe = _recipe(tmp_path, "env.name=webshop", f"env.kwargs={kwargs}", "data.train_tasks=3",
                     f"data.expert_file={tmp_path / 'webshop_sft.json'}", *LONG_CONTEXT)
    # The records are written by a player with room for the expert's 4-5 actions.
    env = WebShopEnv(tmp_path / "shop", seen_size=10, dev_size=5, unseen_size=10, cache_dir=tmp_path / "cache")
    tasks = env.tasks("train")[:3]
    # ETO's ids: the goal index alone, and the record's reward.
    records = {t: eto_record(env, t, t.removeprefix("webshop-"), reward=1.0) for t in tasks}
    assert all(r["id"].isdigit() for r in records.values())
    write_eto_file(tmp_path / "webshop_sft.json", list(records.values()))
    store, stages = _explore_and_pair(recipe, tmp_path)
    assert [t.task_id for t in S.read_trajectories(store, stages["expert"].ref)] == tasks
    _check_lose_pairs(store, stages, records)


# -- ALFWorld: ETO's game files on the shared games ------------------------------------------------
@pytest.fixture(scope="module")
def alfworld_root() -> Path:
    pytest.importorskip("alfworld", reason="the alfworld package is not installed (pip install alfworld==0.4.2)")

    env_root = os.environ.get("ALFWORLD_DATA")
    if env_root and (Path(env_root) / JSON_DIR).is_dir():
        return Path(env_root)
    if not (ALFWORLD_ARCHIVES / "alfworld_train.tgz").is_file():
        pytest.skip(f"no ALFWorld data: neither $ALFWORLD_DATA/{JSON_DIR} nor archives in {ALFWORLD_ARCHIVES}")
    return prepare_data(ALFWORLD_ARCHIVES, default_cache_dir())


def _alfworld_recipe(tmp_path: Path, root: Path, *overrides: str) -> Recipe:
    return _recipe(tmp_path, "env.name=alfworld", f"env.kwargs={{data_root: {root}, train_size: 40, max_steps: 3}}",
                   "data.train_tasks=3", *LONG_CONTEXT, *overrides)


def test_alfworld_ids_map_through_game_files(alfworld_root: Path, tmp_path: Path) -> None:
    env = S.env_factory(_alfworld_recipe(tmp_path, alfworld_root))()
    task = env.tasks("train")[0]
    game = task.removeprefix("train/")
    forms = [f"json_2.1.1/train/{game}", f"{alfworld_root}/json_2.1.1/train/{game}/game.tw-pddl", game]
    records = [EtoRecord(i, str(i), [], None, f) for i, f in enumerate(forms)]
    for record in records:
        assert map_task_ids("alfworld_sft.json", [record], env) == [task]
    with pytest.raises(RecordError, match=r"record 1 \(id '1'\) and record 0 \(id '0'\) both name task"):
        map_task_ids("alfworld_sft.json", records[:2], env)
    with pytest.raises(RecordError, match=r"record 0 \(id '7'\): unknown id .*need a 'game_file' field or a game list"):
        map_task_ids("alfworld_sft.json", [EtoRecord(0, "7", [], None, None)], env)
    nowhere = EtoRecord(0, "0", [], None, "pick_and_place_simple-Book-None-Desk-310/trial_T20000101_000000_000000")
    with pytest.raises(RecordError, match="is not a playable game of any split"):
        map_task_ids("alfworld_sft.json", [nowhere], env)


def test_alfworld_numbered_ids_map_through_etos_game_list(alfworld_root: Path, tmp_path: Path) -> None:
    if not ETO_UNSEEN_GAMES.is_file():
        pytest.skip(f"{ETO_UNSEEN_GAMES} not found")
    env = S.env_factory(_alfworld_recipe(tmp_path, alfworld_root))()
    games = [g.strip() for g in ETO_UNSEEN_GAMES.read_text().splitlines() if g.strip()]
    records = [EtoRecord(i, str(i), [], None, None) for i in range(len(games))]
    mapped = map_task_ids("alfworld_test.json", records, env, id_file=ETO_UNSEEN_GAMES)
    assert mapped == [f"unseen/{g}" for g in games] and set(mapped) == set(env.tasks("unseen"))
    with pytest.raises(RecordError, match="the id file has no line 134"):
        map_task_ids("alfworld_test.json", [EtoRecord(0, "134", [], None, None)], env, id_file=ETO_UNSEEN_GAMES)


def test_alfworld_expert_file_through_game_files_gives_lose_pairs(alfworld_root: Path, tmp_path: Path) -> None:
    recipe = _alfworld_recipe(tmp_path, alfworld_root, f"data.expert_file={tmp_path / 'alfworld_sft.json'}")
    from environments.alfworld.env import AlfworldEnv  # after the fixture checked that alfworld is there

    tasks = S.env_factory(recipe)().tasks("train")[:3]
    writer = AlfworldEnv(data_root=alfworld_root, train_size=40)  # room for the whole expert
    # ETO's records: a running id and the game file; a reward field ETO ignores for ALFWorld.
    records = {t: alfworld_eto_record(writer, t, str(i), game_file=f"json_2.1.1/{t}", reward=0.5)
               for i, t in enumerate(tasks)}
    write_eto_file(tmp_path / "alfworld_sft.json", list(records.values()))
    experts = load_expert_file(tmp_path / "alfworld_sft.json", S.env_factory(recipe), one_shot=False)
    assert [t.task_id for t in experts] == tasks and all(t.reward == 1.0 and t.success for t in experts)
    store, stages = _explore_and_pair(recipe, tmp_path)
    _check_lose_pairs(store, stages, records)


def test_the_new_options_enter_the_cache_keys_only_when_set(tmp_path: Path) -> None:
    """Recipes that do not set them keep their cached stages; setting one recomputes what it changes."""
    a, b = ArtifactRef("a", "a" * 64), ArtifactRef("b", "b" * 64)

    def keys(*overrides: str) -> tuple[str, str, str]:
        r = _recipe(tmp_path, "env.one_shot=true", *overrides)
        return S.expert_key(r), S.pairs_key(r, a, b, 1), S.rft_key(r, a, a, b)

    base = keys()
    assert keys("pairs.cut_rejected=true", "pairs.skip_context_overflow=false", "data.one_shot_in_training=true") == base
    assert keys("pairs.cut_rejected=false")[1] != base[1] and keys("pairs.cut_rejected=false")[0] == base[0]
    assert keys("pairs.skip_context_overflow=true")[1] != base[1]
    stripped = keys("data.one_shot_in_training=false")
    assert all(new != old for new, old in zip(stripped, base, strict=True))
    (tmp_path / "f.json").write_text("[]")
    (tmp_path / "ids.txt").write_text("x\n")
    with_file = keys(f"data.expert_file={tmp_path / 'f.json'}")[0]
    assert with_file != base[0] and keys(f"data.expert_file={tmp_path / 'f.json'}",
                                         f"data.expert_id_file={tmp_path / 'ids.txt'}")[0] != with_file
