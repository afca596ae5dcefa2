"""flows/rollouts.py: evaluation submits the seen and unseen shards before awaiting either, so a
runner with two workers runs the two splits side by side, with the same scores as one at a time."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from eto_core import stages
from eto_core.config import load_recipe
from eto_core.records import EvalSummary
from flows.rollouts import evaluate_policy
from flows.stage_clock import StageClock
from tasks.runners import make_task_runner

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _evaluate(work: Path, workers: int) -> tuple[list[EvalSummary], StageClock]:
    recipe = load_recipe(ROOT / "recipes" / "mini.yaml", [f"storage.root={work / 'artifacts'}",
                                                          f"runner.workers={workers}"])
    store = stages.make_store(recipe, work / "state")
    expert = stages.expert_stage(recipe, store, progress=False)
    model = stages.model_init_stage(recipe, store, expert.ref)
    clock = StageClock()
    with make_task_runner(recipe.runner) as runner:
        out = evaluate_policy(recipe, store, model.ref, stage="base", iteration=0, tracker=None, parent=None,
                              runner=runner, clock=clock)
    return out, clock


def test_two_workers_run_the_seen_and_unseen_shards_side_by_side(
    tmp_path: Path, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone, _ = _evaluate(tmp_path / "one", workers=1)

    # Each shard waits until the other split's shard is in flight too: were the splits run one
    # after the other, the first would wait in vain and the barrier would break.
    both = threading.Barrier(2, timeout=60)
    splits: list[str] = []
    real = stages.rollout_shard

    def in_flight_together(*args: Any) -> Any:
        splits.append(args[-1].split)
        both.wait()
        return real(*args)

    monkeypatch.setattr(stages, "rollout_shard", in_flight_together)
    side_by_side, clock = _evaluate(tmp_path / "two", workers=2)
    assert sorted(splits) == ["seen", "unseen"]  # one shard per split (shard_size >= the tasks)
    assert [{**vars(s), "artifact": None} for s in side_by_side] == \
        [{**vars(s), "artifact": None} for s in alone]
    assert [s.split for s in side_by_side] == ["seen", "unseen"]
    assert list(clock.seconds) == ["evaluate-seen-iter0", "evaluate-unseen-iter0"]
