"""Stage functions without Prefect: rollouts checkpoint per shard and resume from the shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from eto_core import stages
from eto_core.config import load_recipe
from eto_core.pairs import branch_points, expert_rounds, prefix_of
from eto_core.storage import ArtifactStore

ROOT = Path(__file__).resolve().parents[2]


def _shards(store: ArtifactStore, stage: str) -> list[Path]:
    folder = store.local_root / f"{stage}_shard"
    return sorted(p for p in folder.iterdir() if (p / "manifest.json").is_file()) if folder.is_dir() else []


def test_a_rollout_resumes_from_its_finished_shards_with_the_same_trajectories(tmp_path: Path) -> None:
    # Sampling (temperature 1) so that the resumed shard must reproduce its random draws too.
    recipe = load_recipe(ROOT / "recipes" / "mini.yaml", [
        f"storage.root={tmp_path / 'artifacts'}", "explore.shard_size=5", "explore.temperature=1.0"])
    store = stages.make_store(recipe, tmp_path / "state")
    expert = stages.expert_stage(recipe, store, progress=False)
    model = stages.model_init_stage(recipe, store, expert.ref)

    def explore() -> stages.StageResult:
        return stages.rollout_stage(recipe, store, model.ref, stage="explore", split="train", iteration=1,
                               gen=recipe.explore, progress=False)

    first = explore()
    assert first.metrics["train_shards_reused"] == 0.0
    shards = _shards(store, "explore")
    assert len(shards) == 3  # 12 training tasks in shards of 5, 5 and 2
    trajs = stages.read_trajectories(store, first.ref)
    assert [t.task_id for t in trajs] == stages.split_tasks(recipe, "train", "explore")

    # A crash in the last shard: the stage's own artifact and that shard were never published.
    shutil.rmtree(store._local_path(first.ref.uri))
    by_index = {json.loads((s / "manifest.json").read_text())["meta"]["info"]["index"]: s for s in shards}
    shutil.rmtree(by_index[2])
    resumed = explore()
    assert not resumed.cached and resumed.metrics["train_shards_reused"] == 2.0
    assert resumed.ref == first.ref  # same content digest: the same trajectories, byte for byte
    assert stages.read_trajectories(store, resumed.ref) == trajs
    assert len(_shards(store, "explore")) == 3

    # And a repeat finds the whole stage.
    assert explore().cached


def test_step_level_pairs_continue_from_the_experts_prefixes(tmp_path: Path) -> None:
    recipe = load_recipe(ROOT / "recipes" / "mini.yaml", [
        f"storage.root={tmp_path / 'artifacts'}", "pairs.level=both", "pairs.step_points=2", "explore.shard_size=7"])
    store = stages.make_store(recipe, tmp_path / "state")
    expert = stages.expert_stage(recipe, store, progress=False)
    model = stages.model_init_stage(recipe, store, expert.ref)  # an untrained policy: its continuations fail

    def step_rollout() -> stages.StageResult:
        return stages.rollout_stage(recipe, store, model.ref, stage="explore_step", split="train", iteration=1,
                               gen=recipe.explore, progress=False, expert=expert.ref)

    result = step_rollout()
    experts = {t.task_id: t for t in stages.read_trajectories(store, expert.ref)}
    conts = stages.read_trajectories(store, result.ref)
    tasks = stages.split_tasks(recipe, "train", "explore")
    expected = [(t, r) for t in tasks if t in experts
                for r in branch_points(expert_rounds(experts[t]), recipe.pairs.step_points)]
    assert len(expected) > len({t for t, _ in expected})  # two branch points for most tasks with an expert
    assert len(_shards(store, "explore_step")) == -(-len(expected) // 7)
    for cont, (task, rounds) in zip(conts, expected, strict=True):
        prefix = prefix_of(experts[task], rounds)
        assert cont.task_id == task and cont.num_prompt_messages == len(prefix)
        assert cont.messages[: len(prefix)] == prefix  # tidy replays deterministically
    assert step_rollout().cached

    explored = stages.rollout_stage(recipe, store, model.ref, stage="explore", split="train", iteration=1,
                               gen=recipe.explore, progress=False)
    pairs = stages.pairs_stage(recipe, store, expert.ref, explored.ref, 1, step=result.ref)
    kinds = [p.kind for p in stages.read_pairs(store, pairs.ref)]
    assert kinds.count("step") == pairs.metrics["pairs_step"] > 0
    assert kinds.count("lose") == pairs.metrics["pairs_lose"] > 0
    assert stages.num_pairs(pairs) == len(kinds)
    # Without the step rollout the pairs are another artifact (the key names its inputs).
    assert stages.pairs_stage(recipe, store, expert.ref, explored.ref, 1).ref != pairs.ref


def test_two_runs_reaching_a_stage_at_once_compute_it_once(tmp_path: Path) -> None:
    import threading

    recipe = load_recipe(ROOT / "recipes" / "mini.yaml", [f"storage.root={tmp_path / 'artifacts'}"])
    store = stages.make_store(recipe, tmp_path / "state")
    expert = stages.expert_stage(recipe, store, progress=False)
    base = stages.model_init_stage(recipe, store, expert.ref)
    start = threading.Barrier(2)
    results: list[stages.StageResult] = []

    def run() -> None:
        other = stages.make_store(recipe, tmp_path / "state")  # as a second run would build its own
        start.wait()
        results.append(stages.sft_stage(recipe, other, base.ref, expert.ref))

    runs = [threading.Thread(target=run) for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join(timeout=300)
    # One trained, the other waited for it and reused its artifact (not a second copy over it).
    assert sorted(r.cached for r in results) == [False, True]
    assert results[0].ref == results[1].ref


def test_sft_stage_reports_its_training_tokens_per_second(tmp_path: Path) -> None:
    """The stage's tokens/s (MLflow's sft_tokens_per_s) counts every expert token of every epoch."""
    from eto_core.sft import _sft_dataset

    recipe = load_recipe(ROOT / "recipes" / "mini.yaml", [f"storage.root={tmp_path / 'artifacts'}",
                                                          "sft.num_train_epochs=2"])
    store = stages.make_store(recipe, tmp_path / "state")
    expert = stages.expert_stage(recipe, store, progress=False)
    model = stages.model_init_stage(recipe, store, expert.ref)
    sft = stages.sft_stage(recipe, store, model.ref, expert.ref)
    _, tokenizer = stages.load_stage_model(recipe, store, model.ref)
    dataset, _ = _sft_dataset(tokenizer, stages.read_trajectories(store, expert.ref), recipe.sft.max_length)
    tokens = 2 * sum(len(ids) for ids in dataset["input_ids"])
    assert abs(sft.metrics["sft_tokens_per_s"] * sft.metrics["sft_runtime_s"] - tokens) < 1e-6 * tokens
