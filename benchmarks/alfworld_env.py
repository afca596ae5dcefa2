"""ALFWorld adapter speed: reset time and steps/s, replaying experts over N games per split.

Per game, in this order: a reset of a game not loaded before (it pays fast-downward's PDDL
translation, which is then memoised), a second reset of the same game, a burst of invalid
actions (answered without the engine), the expert lookup (gt_traj.json on train; on seen and
unseen the PDDL planner's search plus a verifying replay, in a second engine), and the expert's
replay (valid steps, each recomputing the admissible commands).

    .venv/bin/python benchmarks/alfworld_env.py --archives ../shared/data/alfworld --games 6

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from environments.alfworld.env import AlfworldEnv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data-root", help="folder holding json_2.1.1 (default: $ALFWORLD_DATA)")
    source.add_argument("--archives", help="folder with alfworld_<split>.tgz, extracted once into ~/.cache/eto")
    parser.add_argument("--games", type=int, default=6, help="games per split, evenly spread over the split")
    parser.add_argument("--invalid", type=int, default=10, help="invalid actions per game")
    args = parser.parse_args()

    env = AlfworldEnv(
        data_root=args.data_root,
        archive_dir=Path(args.archives) if args.archives else None,
        train_size=args.games,
        seen_size=args.games,
        unseen_size=args.games,
    )
    rows = []
    try:
        for split in ("train", "seen", "unseen"):
            expert_s, first_s, again_s, steps, step_s, invalid_s, won, have = [], [], [], 0, 0.0, 0.0, 0, 0
            for task in env.tasks(split):
                started = time.perf_counter()
                env.reset(task)
                first_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                env.reset(task)
                again_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                for _ in range(args.invalid):
                    env.step("xyzzy")
                invalid_s += time.perf_counter() - started
                started = time.perf_counter()
                actions = env.expert(task)
                expert_s.append(time.perf_counter() - started)
                env.reset(task)
                started = time.perf_counter()
                for action in actions or []:
                    result = env.step(action)
                step_s += time.perf_counter() - started
                steps += len(actions or [])
                have += bool(actions)
                won += bool(actions) and result.info["success"]
            rows.append((split, len(expert_s), have, won, expert_s, first_s, again_s, steps, step_s,
                         len(expert_s) * args.invalid / invalid_s))
    finally:
        env.close()
    skips = dict(env.expert_skips)

    def mean_max(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.2f} ({max(xs):.2f})"

    print("| split | games | experts | expert wins | expert lookup s, mean (max) | new-game reset s | repeat reset s "
          "| expert steps | steps/s | ms/step | invalid steps/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for split, n, have, won, expert_s, first_s, again_s, steps, step_s, invalid_rate in rows:
        print(f"| {split} | {n} | {have} | {won} | {mean_max(expert_s)} | {mean_max(first_s)} | {mean_max(again_s)} | {steps} "
              f"| {steps / step_s:.1f} | {1000 * step_s / steps:.0f} | {invalid_rate:.0f} |")
    for task, reason in skips.items():
        print(f"no expert for {task}: {reason}")


if __name__ == "__main__":
    main()
