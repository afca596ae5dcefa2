"""The comparison table over seeds, and the pair viewer rendered in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from eto_core.method_comparison import (
    MethodRun,
    comparison_table,
    iteration_plot,
    own_start_rows,
    pair_viewer_html,
    paired_difference,
    paired_rows,
    paired_table,
    task_rewards,
    task_solved_steps,
    with_selection,
)
from eto_core.records import PreferencePair, to_frame
from tests.eto_core.test_pairs import PROMPT, traj


def _run(run_id: str, method: str, seed: str, seen: dict[int, float]) -> MethodRun:
    return MethodRun(run_id, method, seed, {("seen", "avg_reward"): seen, ("seen", "success_rate"): seen,
                                            ("unseen", "avg_reward"): {i: v / 2 for i, v in seen.items()}})


def test_table_aggregates_seeds_and_counts_shared_sft_once() -> None:
    runs = [_run("a", "eto", "0", {0: 0.2, 1: 0.4}), _run("b", "eto", "1", {0: 0.4, 1: 0.6}),
            _run("c", "eto-k4-self", "0", {0: 0.2, 1: 0.5}),  # same seed-0 SFT as run a
            _run("d", "best-of-n", "0", {0: 0.9}), _run("e", "rft", "0", {0: 0.3})]
    table = comparison_table(runs)
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert list(lines) == ["sft", "eto iter 1", "eto-k4-self iter 1", "rft", "best-of-n"]  # oracle last
    assert "| sft | 2 | 0.300 ± 0.141 | 30.0% ± 14.1%" in lines["sft"]  # seeds 0 and 1, not 0 twice
    assert "| eto iter 1 | 2 | 0.500 ± 0.141" in lines["eto iter 1"]
    assert "| rft | 1 | 0.300 | 30.0% | - | 0.150 |" in lines["rft"]
    fig = iteration_plot(runs, "t")
    assert [ax.get_title() for ax in fig.axes] == ["seen", "unseen"]
    labels = {line.get_label() for line in fig.axes[0].get_lines()}
    assert {"eto (2 seeds)", "eto-k4-self (1 seed)"} <= labels


def test_paired_difference_counts_tasks_and_brackets_the_mean() -> None:
    base = {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.5}
    other = {"a": 1.0, "b": 1.0, "c": 0.0, "d": 0.0, "only-here": 1.0}  # "only-here" has no SFT score
    d = paired_difference([(base, other)])
    assert d is not None and (d.tasks, d.better, d.worse) == (4, 2, 1)
    assert d.mean == pytest.approx(0.375) and -0.5 <= d.low < d.mean < d.high <= 1.0
    same = paired_difference([({"a": 0.2, "b": 0.4}, {"a": 0.7, "b": 0.9})])
    assert same is not None and same.low == pytest.approx(0.5) and same.high == pytest.approx(0.5)
    assert paired_difference([({"a": 1.0}, {"b": 1.0})]) is None


def test_paired_difference_resamples_tasks_within_each_seed() -> None:
    # Seed 0 gains +1 on every task, seed 1 loses 1 on every task: pooled, the mean is exactly 0
    # in every resample that keeps each seed's task count; mixing the seeds would spread it.
    up = ({f"t{i}": 0.0 for i in range(20)}, {f"t{i}": 1.0 for i in range(20)})
    down = ({f"t{i}": 1.0 for i in range(20)}, {f"t{i}": 0.0 for i in range(20)})
    d = paired_difference([up, down])
    assert d is not None and (d.tasks, d.better, d.worse, d.seeds) == (40, 20, 20, 2)
    assert d.low == pytest.approx(0.0) and d.high == pytest.approx(0.0)


def test_task_rewards_takes_each_tasks_best_and_skips_env_faults() -> None:
    broken = traj("b", ["x"], 0.9)
    broken.terminate_reason = "env_error"
    frame = to_frame([traj("a", ["x"], 0.2), traj("a", ["y"], 0.6), traj("b", ["x"], 0.1), broken], "trajectories")
    assert task_rewards(frame) == {"a": 0.6, "b": 0.1}


def test_task_solved_steps_keeps_the_picked_episode_of_each_solved_task() -> None:
    broken = traj("d", ["x"], 1.0)
    broken.terminate_reason = "env_error"
    frame = to_frame([
        traj("a", ["x", "y", "z"], 1.0), traj("a", ["x"], 1.0),  # equals: the first (3 steps) is the pick
        traj("b", ["x", "y"], 0.5),  # not solved: no entry
        traj("c", ["x"], 0.2), traj("c", ["x", "y", "z", "w"], 1.0),  # the best is the success
        broken,  # a fault is not a solve
    ], "trajectories")
    assert task_solved_steps(frame) == {"a": 3.0, "c": 4.0}


def test_steps_pair_only_the_tasks_both_solved() -> None:
    """Fed ``task_solved_steps``'s maps, ``paired_rows`` compares steps on the tasks both the
    method and its seed's SFT solved, so a task only one of them solved does not count."""
    sft = task_solved_steps(to_frame([traj("a", ["x"] * 6, 1.0), traj("b", ["x"] * 3, 1.0),
                                      traj("c", ["x"] * 9, 0.0)], "trajectories"))
    eto = task_solved_steps(to_frame([traj("a", ["x"] * 4, 1.0), traj("b", ["x"] * 9, 0.0),
                                      traj("c", ["x"] * 2, 1.0)], "trajectories"))
    runs = [MethodRun("r", "eto", "0", evals={("seen", 0): {"uri": "sft", "digest": "x"},
                                              ("seen", 1): {"uri": "eto", "digest": "x"}})]
    rows = paired_rows(runs, {"sft": sft, "eto": eto}, resamples=100)
    d = rows["eto iter 1"]["seen"]
    assert (d.tasks, d.mean, d.better, d.worse) == (1, -2.0, 0, 1)  # task a only: 4 - 6 steps
    assert "seen Δ steps [95% CI]" in paired_table(rows, quantity="steps")


def test_paired_rows_compare_each_run_with_its_own_seeds_sft() -> None:
    def evals(**uris: str) -> dict[tuple[str, int], dict[str, str]]:
        return {(k.split("_")[0], int(k.split("_")[1])): {"uri": u, "digest": "x"} for k, u in uris.items()}

    rewards = {"sft0": {"a": 0.0, "b": 0.0}, "sft1": {"a": 1.0, "b": 1.0}, "eto0": {"a": 1.0, "b": 0.0},
               "eto1": {"a": 1.0, "b": 1.0}, "rft1": {"a": 0.5, "b": 0.5}}
    runs = [MethodRun("r0", "eto", "0", evals=evals(seen_0="sft0", seen_1="eto0")),
            MethodRun("r1", "eto", "1", evals=evals(seen_0="sft1", seen_1="eto1")),
            MethodRun("r2", "rft", "1", evals=evals(seen_0="rft1", unseen_0="gone"))]  # "gone": not readable
    rows = paired_rows(runs, rewards, resamples=200)
    assert set(rows) == {"eto iter 1", "rft"}  # no "sft minus sft" row
    assert rows["eto iter 1"]["seen"].mean == pytest.approx(0.25)  # seed 0: +1, 0; seed 1: 0, 0
    assert rows["rft"]["seen"].mean == pytest.approx(-0.5)  # against seed 1's SFT, not seed 0's
    assert "unseen" not in rows["rft"]
    table = paired_table(rows)
    assert "| eto iter 1 | 2 | +0.250 [" in table and "| 1 / 0 / 4 | - | - |" in table
    assert "| rft | 1 | -0.500 [" in table


def test_the_dev_selected_iteration_is_a_row_of_its_own_paired_with_sft() -> None:
    rewards = {"sft0": {"a": 0.0, "b": 0.0}, "it0": {"a": 1.0, "b": 0.0}, "sft1": {"a": 0.0, "b": 1.0},
               "it1": {"a": 1.0, "b": 1.0}}
    seed0 = MethodRun("r0", "eto-select", "0", {("seen", "avg_reward"): {0: 0.0, 1: 0.5}},
                      {("seen", 0): {"uri": "sft0", "digest": "x"}, ("seen", 1): {"uri": "it0", "digest": "x"}})
    seed1 = MethodRun("r1", "eto-select", "1", {("seen", "avg_reward"): {0: 0.5, 1: 1.0}},
                      {("seen", 0): {"uri": "sft1", "digest": "x"}, ("seen", 1): {"uri": "it1", "digest": "x"}})
    runs = [with_selection(seed0, 1), with_selection(seed1, 0)]  # seed 1's dev split kept SFT
    table = comparison_table(runs)
    assert "| eto-select, the dev-selected iteration | 2 | 0.500 ± 0.000 |" in table  # 0.5 (iter 1), 0.5 (SFT)
    rows = paired_rows(runs, rewards, resamples=200)
    # seed 0: +1 and 0 against its SFT; seed 1 delivers its SFT itself: 0 and 0
    assert rows["eto-select, the dev-selected iteration"]["seen"].mean == pytest.approx(0.25)
    fig = iteration_plot(runs, "t")
    assert all(x >= 0 for line in fig.axes[0].get_lines() for x in line.get_xdata())  # no pseudo-iteration drawn


def test_own_start_rows_measure_the_eto_half_of_methods_without_sft() -> None:
    rewards = {"sft": {"a": 1.0, "b": 1.0}, "rft": {"a": 0.0, "b": 0.2}, "it1": {"a": 0.5, "b": 0.2}}
    runs = [MethodRun("r0", "eto", "0", evals={("seen", 0): {"uri": "sft", "digest": "x"}}),
            MethodRun("r1", "rft-eto", "0", evals={("seen", 0): {"uri": "rft", "digest": "x"},
                                                   ("seen", 1): {"uri": "it1", "digest": "x"}})]
    own = own_start_rows(runs, rewards, resamples=200)
    assert set(own) == {"rft-eto iter 1"}  # not plain ETO: its start is SFT, already the other table
    assert own["rft-eto iter 1"]["seen"].mean == pytest.approx(0.25)  # against RFT's model ...
    assert paired_rows(runs, rewards, resamples=200)["rft-eto iter 1"]["seen"].mean == pytest.approx(-0.65)  # ... not SFT


def _pair() -> PreferencePair:
    return PreferencePair(
        pair_id="p1", task_id="tidy-7", prompt=PROMPT,
        chosen=[{"role": "assistant", "content": "Thought: the mug is on the desk.\nAction: take mug from desk"}],
        rejected=[{"role": "assistant", "content": "Thought: <script>alert(1)</script>\nAction: go to bed"},
                  {"role": "user", "content": "Observation: Nothing happens."},
                  {"role": "assistant", "content": "Thought: try again\nAction: go to bed"}],
        chosen_reward=1.0, rejected_reward=0.0, kind="lose", iteration=1)


def test_viewer_escapes_record_text() -> None:
    page = pair_viewer_html([_pair()])
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert page.count('class="side rejected"') == 1 and page.count('class="side chosen"') == 1


def test_viewer_renders_side_by_side_in_headless_chromium(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    page = tmp_path / "viewer.html"
    page.write_text(pair_viewer_html([_pair()]))
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'class="side rejected"' in dom and 'class="side chosen"' in dom and "tidy-7" in dom
    shot = tmp_path / "viewer.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,700", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    height, width = pixels.shape[:2]
    assert (width, height) == (1200, 700)
    # The two columns are drawn: the left half holds the red border, the right half the green one.
    red = (pixels[..., 0] > 0.7) & (pixels[..., 1] < 0.45) & (pixels[..., 2] < 0.45)
    green = (pixels[..., 1] > 0.5) & (pixels[..., 0] < 0.35) & (pixels[..., 2] < 0.5)
    assert red[:, : width // 2].sum() > 200 and red[:, width // 2 :].sum() < 50
    assert green[:, width // 2 :].sum() > 200 and green[:, : width // 2].sum() < 50
