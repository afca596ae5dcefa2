"""Evaluation metrics as the paper reports them: average final reward and success rate."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from eto_core.records import EvalSummary, Trajectory


def summarize_best_of(trajectories: Sequence[Trajectory], *, stage: str, iteration: int, split: str) -> EvalSummary:
    """Best-of-N: per task, the sample with the highest reward (the first of equals), then the
    usual averages over tasks. Picking needs the reward, so this is an oracle's upper reference,
    not a policy's score; ``extra['samples_per_task']`` says how many it picked from."""
    best: dict[str, Trajectory] = {}
    counts: Counter[str] = Counter()
    for t in trajectories:
        if t.terminate_reason == "env_error":
            continue
        counts[t.task_id] += 1
        if t.task_id not in best or t.reward > best[t.task_id].reward:
            best[t.task_id] = t
    summary = summarize(list(best.values()), stage=stage, iteration=iteration, split=split)
    summary.extra["samples_per_task"] = float(max(counts.values(), default=0))
    summary.extra["env_errors"] = float(sum(t.terminate_reason == "env_error" for t in trajectories))
    return summary


def summarize(trajectories: Sequence[Trajectory], *, stage: str, iteration: int, split: str) -> EvalSummary:
    """Average reward, success rate and mean steps over one split's episodes.

    Episodes that ended with an environment fault are excluded from the averages (they say
    nothing about the model) and counted in ``extra['env_errors']``.
    """
    scored = [t for t in trajectories if t.terminate_reason != "env_error"]
    n = len(scored)
    reasons = Counter(t.terminate_reason for t in trajectories)
    extra = {f"terminate_{k}": float(v) for k, v in sorted(reasons.items())}
    extra["env_errors"] = float(reasons.get("env_error", 0))
    return EvalSummary(
        stage=stage,
        iteration=iteration,
        split=split,
        avg_reward=sum(t.reward for t in scored) / n if n else 0.0,
        success_rate=sum(t.success for t in scored) / n if n else 0.0,
        mean_steps=sum(t.num_steps for t in scored) / n if n else 0.0,
        num_tasks=n,
        extra=extra,
    )


def results_table(summaries: Sequence[EvalSummary]) -> str:
    """Markdown table: one row per stage/iteration, reward and success per split."""
    splits = sorted({s.split for s in summaries}, key=lambda s: ("seen", "unseen").index(s) if s in ("seen", "unseen") else 9)
    rows: dict[tuple[int, str], dict[str, EvalSummary]] = {}
    for s in summaries:
        rows.setdefault((s.iteration, s.stage), {})[s.split] = s
    header = "| model | " + " | ".join(f"{sp} reward | {sp} success" for sp in splits) + " |"
    sep = "|---|" + "---|---|" * len(splits)
    lines = [header, sep]
    for (iteration, stage), by_split in sorted(rows.items()):
        label = {"dpo": f"ETO iter {iteration}", "base": "base model (zero-shot)"}.get(stage, stage)
        cells = []
        for sp in splits:
            found = by_split.get(sp)
            cells.append(f"{found.avg_reward:.3f} | {found.success_rate:.1%}" if found else "- | -")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
