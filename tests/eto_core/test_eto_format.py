"""ETO's published format imports as Trajectory; malformed records fail naming record and turn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from environments.sciworld import SciWorldEnv
from environments.tidy import TidyEnv
from environments.webshop import WebShopEnv
from environments.webshop.synthetic import generate
from eto_core.eto_format import (
    EtoRecord,
    PromptMismatch,
    expert_file_task_ids,
    expert_reward,
    import_eto_file,
    load_expert_file,
    map_task_ids,
)
from eto_core.prompts import build_prompt
from eto_core.records import RecordError, to_frame
from tests.environments.sciworld.conftest import needs_package, needs_simulator
from tests.eto_core.eto_files import eto_record, write_eto_file

GOOD = {
    "id": "webshop_7",
    "conversations": [
        {"from": "human", "value": "You are web shopping."},
        {"from": "gpt", "value": "OK"},
        {"from": "human", "value": "WebShop [SEP] Instruction: [SEP] i need a red shirt"},
        {"from": "gpt", "value": "Thought: search it.\nAction: search[red shirt]"},
        {"from": "human", "value": "Observation: results"},
        {"from": "gpt", "value": "Thought: buy.\nAction: click[buy now]"},
    ],
}


def _write(tmp_path: Path, records: object) -> Path:
    p = tmp_path / "eto.json"
    p.write_text(json.dumps(records))
    return p


def test_import_roundtrip(tmp_path: Path) -> None:
    (t,) = import_eto_file(_write(tmp_path, [GOOD]), env="webshop")
    assert t.task_id == "webshop_7" and t.num_steps == 2 and t.reward == 1.0 and t.success
    assert t.messages[3]["role"] == "assistant"
    assert len(to_frame([t], "trajectories")) == 1


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda r: r["conversations"][2].update({"from": "robot"}), "turn 2 has role 'robot'"),
        (lambda r: r["conversations"][3].update({"value": "  "}), "turn 3 (gpt) is empty"),
        (lambda r: r["conversations"].pop(), "end with a gpt turn"),
        (lambda r: r["conversations"].insert(1, {"from": "human", "value": "again"}), "both user"),
        (lambda r: r.pop("id"), "missing 'id'"),
    ],
)
def test_malformed_records_name_the_problem(tmp_path: Path, mutate: object, needle: str) -> None:
    bad = json.loads(json.dumps(GOOD))
    mutate(bad)  # type: ignore[operator]
    with pytest.raises(RecordError, match="record 1") as err:
        import_eto_file(_write(tmp_path, [GOOD, bad]), env="webshop")
    assert needle in str(err.value) and "eto.json" in str(err.value)


def test_truncated_jsonl_names_line(tmp_path: Path) -> None:
    p = tmp_path / "eto.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD)[:40] + "\n")
    with pytest.raises(RecordError, match="line 2"):
        import_eto_file(p, env="webshop")


# -- the pipeline's import: ETO's ids -> our task ids, our prompt, ETO's reward rule -----------------
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ETO_SPLITS = SHARED / "eto_splits"
needs_eto_splits = pytest.mark.skipif(
    not (ETO_SPLITS / "sciworld_taskname2id.json").is_file(),
    reason=f"ETO's split files are not at {ETO_SPLITS} (only CI and developers have ../shared/data)",
)


@pytest.fixture(scope="module")
def webshop_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebShopEnv]:
    folder = tmp_path_factory.mktemp("webshop")
    generate(folder / "data", products=300, seed=1)
    env = WebShopEnv(folder / "data", seen_size=10, dev_size=5, unseen_size=10, cache_dir=folder / "cache")
    yield env
    env.close()


def test_webshop_goal_indices_become_task_ids_and_prompts_are_ours(webshop_env: WebShopEnv, tmp_path: Path) -> None:
    tasks = webshop_env.tasks("train")[:3]
    goals = [int(t.removeprefix("webshop-")) for t in tasks]
    records = [eto_record(webshop_env, t, str(g), reward=r) for t, g, r in zip(tasks, goals, (1.0, 0.75, 1.0),
                                                                                    strict=True)]
    path = write_eto_file(tmp_path / "webshop_sft.json", records)
    trajs = load_expert_file(path, lambda: webshop_env, one_shot=True)
    assert [t.task_id for t in trajs] == tasks
    for traj, rec in zip(trajs, records, strict=True):
        first, _ = webshop_env.reset(traj.task_id)
        ours = build_prompt(webshop_env.task_instruction(), webshop_env.one_shot_example(), first)
        assert traj.messages[: traj.num_prompt_messages] == ours  # the prompt exploration uses
        theirs = [c["value"] for c in rec["conversations"][3:]]
        assert [m["content"] for m in traj.messages[traj.num_prompt_messages :]] == theirs  # turns kept
    assert [t.reward for t in trajs] == [1.0, 0.75, 1.0] and not trajs[1].success  # WebShop: the record's reward
    bare = load_expert_file(path, lambda: webshop_env, one_shot=False, limit=2)
    assert len(bare) == 2 and bare[0].num_prompt_messages == 3
    assert expert_file_task_ids(path, lambda: webshop_env) == tasks


def test_unknown_and_duplicate_ids_are_refused_naming_the_records(webshop_env: WebShopEnv, tmp_path: Path) -> None:
    task = webshop_env.tasks("train")[0]
    goal = task.removeprefix("webshop-")
    rec = eto_record(webshop_env, task, goal)
    path = write_eto_file(tmp_path / "unknown.json", [rec, {**rec, "id": "99999"}])
    with pytest.raises(RecordError, match=r"record 1 \(id '99999' -> task 'webshop-99999'\): unknown id"):
        load_expert_file(path, lambda: webshop_env, one_shot=False)
    path = write_eto_file(tmp_path / "dup.json", [rec, rec])
    with pytest.raises(RecordError, match=rf"record 1 \(id '{goal}'\): duplicate id, record 0 has it too"):
        load_expert_file(path, lambda: webshop_env, one_shot=False)
    path = write_eto_file(tmp_path / "same_task.json", [rec, {**rec, "id": task}])
    with pytest.raises(RecordError, match=rf"record 1 \(id '{task}'\) and record 0 \(id '{goal}'\) both name task"):
        load_expert_file(path, lambda: webshop_env, one_shot=False)


def test_a_record_whose_task_turn_is_another_task_is_a_prompt_mismatch(webshop_env: WebShopEnv, tmp_path: Path) -> None:
    first, second = webshop_env.tasks("train")[:2]
    rec = eto_record(webshop_env, first, second.removeprefix("webshop-"))  # plays `first`, names `second`
    path = write_eto_file(tmp_path / "shifted.json", [rec])
    with pytest.raises(PromptMismatch) as err:
        load_expert_file(path, lambda: webshop_env, one_shot=False)
    text = str(err.value)
    assert f"shifted.json: record 0 (id '{second.removeprefix('webshop-')}' -> task '{second}'): prompt mismatch" in text
    assert webshop_env.goal(first).instruction[:40] in text and webshop_env.goal(second).instruction[:40] in text


def test_tidy_ids_are_our_task_ids(tmp_path: Path) -> None:
    env = TidyEnv(train_size=6, seen_size=2, unseen_size=2, dev_size=2)
    tasks = env.tasks("train")[:2]
    path = write_eto_file(tmp_path / "tidy.json", [eto_record(env, t, t) for t in tasks])
    trajs = load_expert_file(path, TidyEnv, one_shot=False)
    assert [t.task_id for t in trajs] == tasks and all(t.reward == 1.0 for t in trajs)
    path = write_eto_file(tmp_path / "numbered.json", [eto_record(env, tasks[0], 0)])
    with pytest.raises(RecordError, match=r"record 0 \(id '0' -> task '0'\): unknown id: .*tidy: unknown task id"):
        load_expert_file(path, TidyEnv, one_shot=False)


@needs_eto_splits
@needs_package
def test_sciworld_ids_map_through_etos_task_numbers() -> None:
    """ETO names a ScienceWorld task '<taskname2id number>_<variation>': every item of its training
    list maps to the task id our environment gives the same item in its ETO split mode."""
    env = SciWorldEnv(splits="eto", eto_splits_dir=str(ETO_SPLITS))
    numbers = json.loads((ETO_SPLITS / "sciworld_taskname2id.json").read_text())
    items = json.loads((ETO_SPLITS / "sciworld_train_indices.json").read_text())
    records = [EtoRecord(i, f"{numbers[name]}_{var}", [], None, None) for i, (name, var) in enumerate(items)]
    mapped = map_task_ids("sciworld_sft.json", records, env, id_file=ETO_SPLITS / "sciworld_taskname2id.json")
    assert mapped == env.tasks("train") and len(mapped) == 1483
    assert mapped[1] == "find-animal/0"  # ETO's ["task-3-find-animal", 0] is "11_0"
    with pytest.raises(RecordError, match=r"record 0 \(id '11_0'\): unknown id for environment 'sciworld': .*"
                       "sciworld_taskname2id.json: set data.expert_id_file"):
        map_task_ids("sciworld_sft.json", [EtoRecord(0, "11_0", [], None, None)], env)
    with pytest.raises(RecordError, match="task number 5 is not in the id file"):
        map_task_ids("f.json", [EtoRecord(0, "5_1", [], None, None)], env,
                     id_file=ETO_SPLITS / "sciworld_taskname2id.json")
    # ScienceWorld and ALFWorld experts count 1.0, as ETO's script takes them.
    assert expert_reward("sciworld", EtoRecord(0, "11_0", [], 0.5, None)) == 1.0
    assert expert_reward("webshop", EtoRecord(0, "1", [], 0.5, None)) == 0.5


@needs_eto_splits
@needs_simulator
def test_sciworld_records_import_through_the_id_file(tmp_path: Path) -> None:
    """ETO's ScienceWorld task turn is the task description alone; ours adds the room: the import
    finds the task in it, keeps the record's turns and counts the expert 1.0 whatever it says."""
    env = SciWorldEnv(splits="eto", eto_splits_dir=str(ETO_SPLITS), task_types=["find-animal"],
                      cache_dir=str(tmp_path / "sw"))
    try:
        task = env.tasks("train")[0]
        number = json.loads((ETO_SPLITS / "sciworld_taskname2id.json").read_text())["task-3-find-animal"]
        rid = f"{number}_{task.rsplit('/', 1)[1]}"
        rec = eto_record(env, task, rid, reward=0.5)
        path = write_eto_file(tmp_path / "sciworld_sft.json", [rec])
        (traj,) = load_expert_file(path, lambda: env, one_shot=False, id_file=ETO_SPLITS / "sciworld_taskname2id.json")
        first, _ = env.reset(task)
        assert traj.task_id == task and traj.messages[2]["content"] == first != rec["conversations"][2]["value"]
        assert traj.messages[3:] == [{"role": "assistant" if c["from"] == "gpt" else "user", "content": c["value"]}
                                     for c in rec["conversations"][3:]]
        assert traj.reward == 1.0 and traj.success
    finally:
        env.close()
