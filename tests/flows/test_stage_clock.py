"""The wall-time breakdown a pipeline run reports: stages in the order they ran, summed when a
stage name repeats, a stage that raises still counted."""

from __future__ import annotations

import time

import pytest

from flows.stage_clock import StageClock, seconds_table


def test_stages_are_timed_in_order_and_summed() -> None:
    clock = StageClock()
    with clock.stage("sft"):
        time.sleep(0.02)
    with clock.stage("evaluate-seen-iter0"):
        pass
    with clock.stage("sft"):
        time.sleep(0.02)
    assert list(clock.seconds) == ["sft", "evaluate-seen-iter0"]
    assert clock.seconds["sft"] >= 0.04 > clock.seconds["evaluate-seen-iter0"]
    assert clock.metrics()["seconds/sft"] == round(clock.seconds["sft"], 3)


def test_a_failing_stage_still_counts_and_no_clock_times_nothing() -> None:
    clock = StageClock()
    with pytest.raises(RuntimeError), clock.stage("dpo-iter1"):
        time.sleep(0.01)
        raise RuntimeError("boom")
    assert clock.seconds["dpo-iter1"] >= 0.01
    with StageClock.timing(None, "ignored"):
        pass
    with StageClock.timing(clock, "pairs-iter1"):
        pass
    assert list(clock.seconds) == ["dpo-iter1", "pairs-iter1"]


def test_table_gives_minutes_shares_and_total() -> None:
    table = seconds_table({"sft": 90.0, "dpo-iter1": 30.0})
    lines = table.splitlines()
    assert lines[0] == "| stage | seconds | minutes | share |"
    assert lines[2] == "| sft | 90.0 | 1.5 | 75% |"
    assert lines[3] == "| dpo-iter1 | 30.0 | 0.5 | 25% |"
    assert lines[-1] == "| total | 120.0 | 2.0 | 100% |"
    assert seconds_table({}).splitlines()[-1] == "| total | 0.0 | 0.0 | 100% |"
