"""kill -9 of `eto run` during each stage, then the same command again, until it completes.

One artifact root and state directory go through five crashes in a row: in SFT, in exploration
after its first shard, as pair construction starts, in DPO, and in the last evaluation after its
first shard. Each kill is SIGKILL to the whole process group (the CLI, its Prefect ephemeral
server and anything else it started), triggered from outside by what a user would see: the
progress bars on stderr and the artifacts appearing in the store. After every kill the store
holds only complete artifacts (manifest present, every file's hash right); the rerun reuses
every stage that had finished (their manifests are never rewritten) and the final results equal
those of an uninterrupted run of the same command with the same seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.cli_runs import bar_at, check_complete, manifests, run, stages_done
from tests.reliability.conftest import ROWS

pytestmark = pytest.mark.slow

def _evaluated_after_dpo(root: Path) -> bool:
    done = stages_done(root)
    return done.get("dpo", 0) >= 1 and done.get("evaluate_shard", 0) >= 5  # 4 after SFT, then one more


Done = dict[str, int]
# (stage, where, when to kill, what must still be unfinished right after the kill)
KILLS: list[tuple[str, str, Callable[[str, Path], bool], Callable[[Done], bool]]] = [
    ("sft", "SFT, after 2 optimizer steps", lambda out, root: bar_at(out, "SFT", 2),
     lambda d: d.get("sft", 0) == 0),
    ("explore", "exploration, after its first shard",
     lambda out, root: stages_done(root).get("explore_shard", 0) >= 1, lambda d: d.get("explore", 0) == 0),
    # Pair construction takes milliseconds: the kill lands in it or in DPO right after it.
    ("pairs", "pair construction (killed as exploration publishes)",
     lambda out, root: stages_done(root).get("explore", 0) >= 1, lambda d: d.get("dpo", 0) == 0),
    ("dpo", "DPO, after 2 optimizer steps", lambda out, root: bar_at(out, "DPO", 2),
     lambda d: d.get("dpo", 0) == 0),
    ("evaluate", "the final evaluation, after its first shard", lambda out, root: _evaluated_after_dpo(root),
     lambda d: d.get("evaluate", 0) < 4),
]


def test_kill_9_in_every_stage_then_rerun_completes_with_the_uninterrupted_results(tmp_path: Path) -> None:
    baseline = run(tmp_path / "baseline", None)
    assert baseline.returncode == 0, baseline.output[-4000:]
    expected = json.loads((tmp_path / "baseline" / "result.json").read_text())

    work = tmp_path / "crashed"
    root = work / "artifacts"
    for stage, where, trigger, unfinished in KILLS:
        before = manifests(root) if root.is_dir() else {}
        crashed = run(work, trigger)
        assert crashed.killed, f"the run ended before the kill in {where}:\n{crashed.output[-4000:]}"
        assert not (work / "result.json").exists()
        check_complete(root)
        after = manifests(root)
        # Nothing finished earlier was redone (same digest, manifest untouched) ...
        assert all(after[name] == before[name] for name in before), f"kill in {where}: a finished stage was redone"
        # ... and the kill came while the stage was still running.
        assert unfinished(stages_done(root)), f"kill in {where}: came too late ({stages_done(root)})"
        reused = sorted({n.split("/")[0] for n in before})
        ROWS.append({
            "area": "crash (kill -9)", "test": f"kill during {stage}",
            "fault": f"SIGKILL to `eto run`'s process group during {where}",
            "error": (f"this run reused, untouched, the {len(before)} artifact(s) earlier runs had finished "
                      f"({', '.join(reused) or 'none'}) and published {len(after) - len(before)} more before the "
                      "kill; afterwards the store held only complete artifacts (manifest + hashes checked)"),
            "lost": "the work in flight in that stage (at most one rollout shard); no partial artifact"})

    before = manifests(root)
    final = run(work, None)
    assert final.returncode == 0, final.output[-4000:]
    assert all(manifests(root)[name] == before[name] for name in before)
    check_complete(root)
    result = json.loads((work / "result.json").read_text())
    # Same scores; the evaluation artifacts' URIs differ, being under another root.
    assert [{**s, "artifact": None} for s in result["summaries"]] == [{**s, "artifact": None} for s in expected["summaries"]]
    assert result["final_model"]["digest"] == expected["final_model"]["digest"]
    # The killed runs' half-written staging folders were cleaned up by the run that followed.
    assert not list((work / "state" / "cache" / "staging").glob("stage-*"))
    ROWS.append({"area": "crash (kill -9)", "test": "final rerun",
                 "fault": "the same command after the five kills above",
                 "error": "completed; evaluation summaries and the final model's content digest equal an "
                          "uninterrupted run's (same seed); the killed runs' staging folders were removed",
                 "lost": "nothing"})
