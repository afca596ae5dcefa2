"""Plots people would rather look at than read: reward and success per ETO iteration.

Rendered headless (Agg) and written atomically, for MLflow (``Tracker.log_figure``) and for
``eto compare``'s report folder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eto_core.records import EvalSummary


def reward_plot(summaries: Sequence[EvalSummary], title: str, baseline: Sequence[EvalSummary] = ()) -> Any:
    """Average reward and success per iteration on each split (iteration 0 = SFT); ``baseline``
    (the untrained starting model) as a dashed level per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for split in sorted({s.split for s in summaries}):
        pts = sorted((s.iteration, s.avg_reward, s.success_rate) for s in summaries if s.split == split)
        xs = [p[0] for p in pts]
        axes[0].plot(xs, [p[1] for p in pts], marker="o", label=split)
        lines = axes[1].plot(xs, [p[2] for p in pts], marker="o", label=split)
        for b in (b for b in baseline if b.split == split):
            axes[0].axhline(b.avg_reward, ls="--", lw=1, color=lines[0].get_color(), label=f"{split}, {b.stage}")
            axes[1].axhline(b.success_rate, ls="--", lw=1, color=lines[0].get_color(), label=f"{split}, {b.stage}")
    iterations = sorted({s.iteration for s in summaries})
    for ax, label in zip(axes, ("average reward", "success rate"), strict=True):
        ax.set_xticks(iterations)
        ax.set_xlabel("ETO iteration (0 = SFT)")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_plot(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as tmp:
        fig.savefig(tmp.name, dpi=110)
    Path(tmp.name).replace(path)
    return path
