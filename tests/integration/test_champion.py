"""The champion alias moves only to a version that beats it on the selection split (seen)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eto_core.tracking import CHAMPION, Tracker, compare_versions

pytestmark = pytest.mark.integration


def _version(tracker: Tracker, name: str, seen: float, unseen: float) -> str:
    run = tracker.start_run("dpo")
    tracker.log_metrics(run, {"dpo_loss": 0.5})
    tracker.end_run(run)
    version = tracker.register_model(name, run, "model", tags={"stage": "dpo"})
    # the unseen reward is reported, never used to choose
    tracker.client.set_model_version_tag(name, version, "unseen_avg_reward", f"{unseen:.4f}")
    tracker.client.set_model_version_tag(name, version, "seen_avg_reward", f"{seen:.4f}")
    return version


def test_champion_moves_only_on_a_better_seen_reward(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "champion-test")
    name = "eto-test"
    steps = [(0.30, 0.1, True), (0.20, 0.9, False), (0.30, 0.9, False), (0.50, 0.0, True)]
    champions = []
    for seen, unseen, moves in steps:
        version = _version(tracker, name, seen, unseen)
        decision = tracker.promote_if_better(name, version)
        assert decision.promoted is moves, decision.reason
        champions.append(str(tracker.client.get_model_version_by_alias(name, CHAMPION).version))
        assert tracker.client.get_model_version(name, version).tags["champion_decision"] == decision.reason
    assert champions == ["1", "1", "1", "4"]
    assert "does not beat champion v1" in tracker.client.get_model_version(name, "3").tags["champion_decision"]
    # promoting the champion again changes nothing
    assert not tracker.promote_if_better(name, "4").promoted

    rows = compare_versions(uri, name)
    assert [r["version"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["aliases"] for r in rows] == ["-", "-", "-", "champion"]
    assert rows[0]["seen_avg_reward"] == "0.3000" and rows[0]["run metrics"] == "dpo_loss=0.5"


def test_a_version_without_evaluation_cannot_be_promoted(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "champion-test")
    run = tracker.start_run("sft")
    version = tracker.register_model("eto-test", run, "model", tags={})
    with pytest.raises(ValueError, match="seen_avg_reward"):
        tracker.promote_if_better("eto-test", version)
