"""Methods side by side from their tracked runs, as a table, plots and a pair viewer: the logic
of `eto compare`, which flows/compare.py runs as a flow.

Every top-level MLflow run of `eto run`, `eto baseline` and `eto evaluate` carries its method
(tag ``eto.method``), seed and per-split metrics by iteration (step 0 = before any ETO
iteration). Runs of one method and row (e.g. "eto, iteration 2") over several seeds are
aggregated as mean ± sample standard deviation, so a single lucky seed shows as such.

Each run also tags its evaluation artifacts, so every row can be paired task by task with the
SFT policy of its seed: the mean difference with a bootstrap interval over tasks, which is the
spread a benchmark run on one seed still has.
"""

from __future__ import annotations

import html
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from eto_core.records import PreferencePair

METRICS = ("avg_reward", "success_rate", "mean_steps")
SPLITS = ("seen", "unseen")
SELECTED = -1
"""The pseudo-iteration under which a run with iteration selection (tag ``eto.best_iteration``)
repeats the numbers of the iteration its dev split picked: the model that method delivers."""


@dataclass
class MethodRun:
    """One tracked run: its method, seed and metric values by (split, metric) and iteration."""

    run_id: str
    method: str
    seed: str
    values: dict[tuple[str, str], dict[int, float]] = field(default_factory=dict)
    # (split, iteration) -> the evaluation artifact ({"uri", "digest"}), for per-task pairing
    evals: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)
    storage: dict[str, str] = field(default_factory=dict)  # the run's S3 endpoint/region, if any


def _is_eto_family(method: str) -> bool:
    """Methods whose iteration 0 is the shared SFT policy (ETO without SFT starts elsewhere)."""
    return method.startswith("eto") and method != "eto-no-sft"


def with_selection(run: MethodRun, best: int) -> MethodRun:
    """``run`` with its selected iteration's metrics and evaluations repeated under ``SELECTED``."""
    for by_iteration in run.values.values():
        if best in by_iteration:
            by_iteration[SELECTED] = by_iteration[best]
    for (split, iteration), ref in list(run.evals.items()):
        if iteration == best:
            run.evals[(split, SELECTED)] = ref
    return run


def row_label(method: str, iteration: int) -> str:
    if iteration == SELECTED:
        return f"{method}, the dev-selected iteration"
    if _is_eto_family(method):
        return "sft" if iteration == 0 else f"{method} iter {iteration}"
    if iteration == 0:
        return method
    return f"{method} iter {iteration}"


@dataclass
class Cell:
    values: list[float]

    def text(self, percent: bool = False) -> str:
        if not self.values:
            return "-"
        mean = statistics.fmean(self.values)
        fmt = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.3f}")
        if len(self.values) == 1:
            return fmt(mean)
        return f"{fmt(mean)} ± {fmt(statistics.stdev(self.values))}"


def aggregate(runs: Sequence[MethodRun]) -> dict[str, dict[tuple[str, str], Cell]]:
    """Row label -> (split, metric) -> the values over the runs (seeds) that have that row."""
    rows: dict[str, dict[tuple[str, str], Cell]] = defaultdict(lambda: defaultdict(lambda: Cell([])))
    for run in runs:
        for (split, metric), by_iteration in run.values.items():
            for iteration, value in by_iteration.items():
                rows[row_label(run.method, iteration)][(split, metric)].values.append(value)
    return {label: dict(cells) for label, cells in rows.items()}


def _order(label: str) -> tuple[int, str]:
    if label in ("base", "sft"):  # the zero-shot model, then SFT: the references first
        return (0, label)
    if label.startswith("best-of"):
        return (9, label)  # the oracle reference last
    return (1, label)


def comparison_table(runs: Sequence[MethodRun]) -> str:
    """Markdown: one row per method and iteration, reward / success / steps per split."""
    rows = aggregate(_dedupe_sft(runs))
    seeds = {label: max(len(c.values) for c in cells.values()) for label, cells in rows.items()}
    header = "| method | seeds | " + " | ".join(f"{s} reward | {s} success | {s} steps" for s in SPLITS) + " |"
    lines = [header, "|---|---:|" + "---:|---:|---:|" * len(SPLITS)]
    for label in sorted(rows, key=_order):
        cells = rows[label]
        parts = []
        for split in SPLITS:
            parts += [cells.get((split, "avg_reward"), Cell([])).text(),
                      cells.get((split, "success_rate"), Cell([])).text(percent=True),
                      cells.get((split, "mean_steps"), Cell([])).text()]
        lines.append(f"| {label} | {seeds[label]} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def _dedupe_sft(runs: Sequence[MethodRun]) -> list[MethodRun]:
    """ETO variants of one seed share their SFT stage: count its iteration-0 numbers once per seed."""
    out: list[MethodRun] = []
    seen_sft: set[str] = set()
    for run in runs:
        if _is_eto_family(run.method):
            if run.seed in seen_sft:
                values = {k: {i: v for i, v in by.items() if i != 0} for k, by in run.values.items()}
                run = MethodRun(run.run_id, run.method, run.seed, values)
            seen_sft.add(run.seed)
        out.append(run)
    return out


def iteration_plot(runs: Sequence[MethodRun], title: str) -> Any:
    """Average reward per iteration, one line per method (mean over seeds, band = ±1 std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(SPLITS), figsize=(10, 3.8), sharey=True)
    by_method: dict[str, list[MethodRun]] = defaultdict(list)
    for run in runs:
        by_method[run.method].append(run)
    for ax, split in zip(axes, SPLITS, strict=True):
        for method, group in sorted(by_method.items()):
            points: dict[int, list[float]] = defaultdict(list)
            for run in group:
                for iteration, value in run.values.get((split, "avg_reward"), {}).items():
                    if iteration != SELECTED:  # a repeat of one of the iterations drawn
                        points[iteration].append(value)
            if not points:
                continue
            xs = sorted(points)
            means = [statistics.fmean(points[x]) for x in xs]
            spread = [statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs]
            style = "--" if method.startswith("best-of") else "-"
            # The seed count is in the label: a one-seed line next to a 3-seed mean is not comparable.
            seeds = len({run.seed for run in group})
            ax.plot(xs, means, style, marker="o", label=f"{method} ({seeds} seed{'s' if seeds > 1 else ''})")
            ax.fill_between(xs, [m - s for m, s in zip(means, spread, strict=True)],
                            [m + s for m, s in zip(means, spread, strict=True)], alpha=0.15)
        ax.set_title(split)
        ax.set_xlabel("iteration (0 = SFT / the method's own model)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole numbers
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("average reward")
    if axes[-1].get_legend_handles_labels()[0]:  # runs with only one split's metrics draw nothing here
        axes[-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# -- per-task differences from SFT -------------------------------------------------------------

def task_rewards(frame: pd.DataFrame) -> dict[str, float]:
    """Per task, the best reward of its episodes: the one episode of a greedy evaluation, or
    Best-of-N's pick. Environment faults are left out, as the summaries leave them out."""
    scored = frame[frame["terminate_reason"] != "env_error"]
    return {str(k): float(v) for k, v in scored.groupby("task_id")["reward"].max().items()}


def task_solved_steps(frame: pd.DataFrame) -> dict[str, float]:
    """Per task that was solved, the steps its solving episode took: the one episode of a
    greedy evaluation, or Best-of-N's pick (its best reward, the first of equals), if that
    succeeded. Paired with SFT's (``paired_rows``) these compare steps on the tasks both solved,
    which is what the paper's action efficiency asks; a mean over all episodes mostly counts
    the failures that ran to the step cap."""
    scored = frame[frame["terminate_reason"] != "env_error"]
    picked = scored.loc[scored.groupby("task_id")["reward"].idxmax()]
    solved = picked[picked["success"]]
    return {str(t): float(n) for t, n in zip(solved["task_id"], solved["num_steps"], strict=True)}


@dataclass(frozen=True)
class PairedDifference:
    """Mean per-task reward difference (method - SFT) over the tasks both evaluated, its
    bootstrap interval, and how many tasks went up or down."""

    tasks: int
    mean: float
    low: float
    high: float
    better: int
    worse: int
    seeds: int

    def text(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def paired_difference(groups: Sequence[tuple[Mapping[str, float], Mapping[str, float]]], *,
                      resamples: int = 5000, level: float = 0.95, seed: int = 0) -> PairedDifference | None:
    """``groups``: one (SFT, method) pair of task -> reward maps per seed. The tasks are the unit:
    a seed's tasks are resampled within that seed, so the interval reflects which tasks were
    drawn (the spread a single seed still has) and the seeds' differences are not mixed up.
    None when no task was evaluated by both."""
    diffs = [np.array([other[t] - base[t] for t in sorted(base.keys() & other.keys())]) for base, other in groups]
    diffs = [d for d in diffs if d.size]
    if not diffs:
        return None
    pooled = np.concatenate(diffs)
    rng = np.random.default_rng(seed)
    # Every resample draws as many tasks per seed as it has, so the pooled mean keeps its weights.
    means = np.zeros(resamples)
    for d in diffs:
        means += d[rng.integers(0, d.size, size=(resamples, d.size))].sum(axis=1)
    means /= pooled.size
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return PairedDifference(int(pooled.size), float(pooled.mean()), float(low), float(high),
                            int((pooled > 0).sum()), int((pooled < 0).sum()), len(diffs))


# row label -> split -> one (reference, method) pair of task -> reward maps per seed
_Groups = dict[str, dict[str, list[tuple[Mapping[str, float], Mapping[str, float]]]]]


def paired_rows(runs: Sequence[MethodRun], rewards: Mapping[str, Mapping[str, float]],
                **kwargs: Any) -> dict[str, dict[str, PairedDifference]]:
    """Row label -> split -> its difference from the SFT policy of the same seed. ``rewards``
    maps an evaluation artifact's URI to its per-task rewards (``task_rewards``)."""
    sft: dict[tuple[str, str], str] = {}  # (seed, split) -> the SFT evaluation's URI
    for run in runs:
        if _is_eto_family(run.method):
            for (split, iteration), ref in run.evals.items():
                if iteration == 0 and ref["uri"] in rewards:
                    sft.setdefault((run.seed, split), ref["uri"])
    groups: _Groups = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for (split, iteration), ref in run.evals.items():
            label = row_label(run.method, iteration)
            base = sft.get((run.seed, split))
            if label == "sft" or base is None or ref["uri"] not in rewards:
                continue
            groups[label][split].append((rewards[base], rewards[ref["uri"]]))
    return _differences(groups, **kwargs)


def own_start_rows(runs: Sequence[MethodRun], rewards: Mapping[str, Mapping[str, float]],
                   **kwargs: Any) -> dict[str, dict[str, PairedDifference]]:
    """For the methods that do not start from SFT (RFT -> ETO, ETO without SFT): each ETO
    iteration against the same run's iteration 0, the model its iterations started from. That is
    the ETO half of those methods, which the difference from SFT mixes with the start's gap."""
    groups: _Groups = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if _is_eto_family(run.method):
            continue
        for (split, iteration), ref in run.evals.items():
            start = run.evals.get((split, 0))
            if iteration in (0, SELECTED) or start is None or start["uri"] not in rewards or ref["uri"] not in rewards:
                continue
            groups[row_label(run.method, iteration)][split].append((rewards[start["uri"]], rewards[ref["uri"]]))
    return _differences(groups, **kwargs)


def _differences(groups: _Groups, **kwargs: Any) -> dict[str, dict[str, PairedDifference]]:
    out: dict[str, dict[str, PairedDifference]] = {}
    for label, by_split in groups.items():
        for split, pairs in by_split.items():
            found = paired_difference(pairs, **kwargs)
            if found is not None:
                out.setdefault(label, {})[split] = found
    return out


def paired_table(rows: Mapping[str, Mapping[str, PairedDifference]], quantity: str = "reward") -> str:
    """Markdown: per row and split, the mean difference from its reference (SFT, or the method's
    own start) with its 95% interval, and the tasks that went up / down out of those compared
    (tasks x seeds)."""
    header = "| method | seeds | " + " | ".join(f"{s} Δ {quantity} [95% CI] | {s} tasks ↑ / ↓ / n" for s in SPLITS) + " |"
    lines = [header, "|---|---:|" + "---:|---:|" * len(SPLITS)]
    for label in sorted(rows, key=_order):
        parts = [str(max(d.seeds for d in rows[label].values()))]
        for split in SPLITS:
            d = rows[label].get(split)
            parts += [d.text(), f"{d.better} / {d.worse} / {d.tasks}"] if d else ["-", "-"]
        lines.append(f"| {label} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


# -- the trajectory viewer -------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 1.3rem; } h2 { font-size: 1.05rem; margin-top: 2rem; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.side { border-radius: 8px; padding: 0.6rem 0.8rem; background: #fff; border: 2px solid #ddd; }
.side.rejected { border-color: #d9534f; } .side.chosen { border-color: #3c9d5d; }
.side h3 { margin: 0 0 0.5rem; font-size: 0.95rem; }
.rejected h3 { color: #b52b27; } .chosen h3 { color: #2b7a46; }
.msg { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 0.8rem; padding: 0.35rem 0.5rem;
       margin: 0.3rem 0; border-radius: 5px; }
.msg.assistant { background: #eef3ff; } .msg.user { background: #f3f3f3; color: #444; }
details { margin: 0.5rem 0; } summary { cursor: pointer; color: #555; font-size: 0.85rem; }
"""


def _messages(messages: Sequence[dict[str, str]]) -> str:
    return "\n".join(f'<div class="msg {html.escape(m["role"])}">{html.escape(m["content"])}</div>' for m in messages)


def pair_viewer_html(pairs: Sequence[PreferencePair], title: str = "ETO pairs: failure vs success") -> str:
    """A standalone HTML page: each pair's rejected (failure) and chosen (success) trajectories
    side by side after their shared prompt. Everything from the records is escaped."""
    blocks = []
    for pair in pairs:
        rejected_label = {"win": "expert (rejected)", "step": "worse continuation (rejected)"}.get(
            pair.kind, "failure (rejected)")
        chosen_label = {"lose": "expert success (chosen)", "win": "agent, above the expert (chosen)",
                        "self": "agent's better sample (chosen)",
                        "step": "better continuation (chosen)"}.get(pair.kind, "chosen")
        blocks.append(f"""
<section class="pair-block" data-pair-id="{html.escape(pair.pair_id)}">
<h2>task {html.escape(pair.task_id)} · {html.escape(pair.kind)} pair · iteration {pair.iteration}</h2>
<details><summary>shared prompt{" and expert prefix" if pair.kind == "step" else ""} ({len(pair.prompt)} messages)</summary>{_messages(pair.prompt)}</details>
<div class="pair">
<div class="side rejected"><h3>{rejected_label} · reward {pair.rejected_reward:.3f}</h3>{_messages(pair.rejected)}</div>
<div class="side chosen"><h3>{chosen_label} · reward {pair.chosen_reward:.3f}</h3>{_messages(pair.chosen)}</div>
</div>
</section>""")
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{len(pairs)} pair(s). Left: the trajectory DPO pushes down; right: the one it pushes up.</p>"
            + "".join(blocks) + "</body></html>\n")
