"""Per-task rewards of two evaluated models from two runs' artifact folders, paired by task.

For comparing models that live in different runs (different recipes or workdirs), which
`eto compare` (one MLflow store) does not reach. Each model is named by the folder of its
artifacts (``--a`` / ``--b``: an artifact root) and a substring of its model URI (``--a-model``
/ ``--b-model``, e.g. ``/sft/``); every evaluation artifact of that model is read. Prints, per
split, the mean reward of each, the mean paired difference b - a with a 95% bootstrap interval
(10,000 resamples of tasks, seed 0), and how many tasks went up and down.

    .venv/bin/python benchmarks/paired_rewards.py --a /root/eto-smollm/artifacts --a-model /sft/ \\
        --b /root/eto-hour/artifacts --b-model /sft/

Several seeds: give one --a-model and one --b-model per seed, in the same order (each seed's ETO
against its own SFT); the tasks of all seeds are pooled, each (seed, task) one paired sample.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd


def evaluation_frames(root: str, model: str) -> Iterator[pd.DataFrame]:
    """The trajectories of every evaluation artifact under ``root`` whose model URI contains ``model``."""
    for path in sorted(Path(root, "evaluate").glob("*/trajectories.parquet")):
        df = pd.read_parquet(path)
        if len(df) and model in str(df.model_uri.iloc[0]):
            yield df


def rewards(root: str, model: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for df in evaluation_frames(root, model):
        out.update(dict(zip(df.task_id, df.reward.astype(float), strict=True)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True)
    parser.add_argument("--a-model", required=True, nargs="+")
    parser.add_argument("--b", required=True)
    parser.add_argument("--b-model", required=True, nargs="+")
    args = parser.parse_args()
    if len(args.a_model) != len(args.b_model):
        parser.error(f"{len(args.a_model)} --a-model values but {len(args.b_model)} --b-model: give one pair per seed")
    runs = [(rewards(args.a, am), rewards(args.b, bm)) for am, bm in zip(args.a_model, args.b_model, strict=True)]
    rng = np.random.default_rng(0)
    print("| split | tasks in both | a mean | b mean | b - a | 95% interval | up | down |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for split in sorted({t.rsplit("-", 1)[0] for a, _ in runs for t in a}):
        pairs = [(a[t], b[t]) for a, b in runs for t in a if t.rsplit("-", 1)[0] == split and t in b]
        if not pairs:
            continue
        a_r, b_r = np.array(pairs).T
        diff = b_r - a_r
        boots = diff[rng.integers(0, len(diff), (10_000, len(diff)))].mean(1)
        low, high = np.percentile(boots, [2.5, 97.5])
        print(f"| {split} | {len(diff)} | {a_r.mean():.3f} | {b_r.mean():.3f} | "
              f"{diff.mean():+.3f} | [{low:+.3f}, {high:+.3f}] | {(diff > 0).sum()} | {(diff < 0).sum()} |")


if __name__ == "__main__":
    main()
