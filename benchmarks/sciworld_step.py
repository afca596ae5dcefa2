"""ScienceWorld step throughput: the adapter's fast path vs ScienceWorld's own ``env.step``.

Both replay the same gold action sequences on the same variations, side by side in one run
(each in its own JVM, alternating task by task so machine noise hits both alike).
``scienceworld.ScienceWorldEnv.step`` also builds the list of every valid action/object
combination and reads look/inventory/task on every call; the adapter's step reads only the
observation, score and completion flag, which is all an ETO agent uses.

    .venv/bin/python benchmarks/sciworld_step.py --tasks find-animal boil use-thermometer --variations 3

Prints a markdown table (the one in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time

from environments.sciworld import SciWorldEnv
from environments.sciworld.splits import task_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["find-animal", "boil", "use-thermometer", "chemistry-mix"])
    parser.add_argument("--variations", type=int, default=3, help="dev variations per task type")
    args = parser.parse_args()

    from scienceworld import ScienceWorldEnv

    fast = SciWorldEnv(task_types=args.tasks)
    slow = ScienceWorldEnv("", envStepLimit=10_000)
    totals = {"fast": [0, 0.0], "env.step": [0, 0.0]}
    rows = []
    try:
        for t in args.tasks:
            for v in fast.variations()[t]["dev"][: args.variations]:
                tid = task_id(t, v)
                gold = fast.expert(tid) or []
                fast.reset(tid)
                started = time.perf_counter()
                n = 0
                for action in gold:
                    n += 1
                    result = fast.step(action)
                    if result.terminated or result.truncated:
                        break
                f_s = time.perf_counter() - started
                gold = gold[:n]  # the step cap may cut a long gold path
                slow.load(t, v, "")
                slow.reset()
                started = time.perf_counter()
                for action in gold:
                    slow.step(action)
                s_s = time.perf_counter() - started
                totals["fast"][0] += len(gold)
                totals["fast"][1] += f_s
                totals["env.step"][0] += len(gold)
                totals["env.step"][1] += s_s
                rows.append((tid, len(gold), len(gold) / f_s, len(gold) / s_s))
    finally:
        fast.close()
        slow.close()
    print("| variation | steps | fast path steps/s | env.step steps/s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for tid, n, f, s in rows:
        print(f"| {tid} | {n} | {f:.0f} | {s:.1f} | {f / s:.1f}x |")
    f_rate = totals["fast"][0] / totals["fast"][1]
    s_rate = totals["env.step"][0] / totals["env.step"][1]
    print(f"| **all** | {totals['fast'][0]} | **{f_rate:.0f}** | **{s_rate:.1f}** | **{f_rate / s_rate:.1f}x** |")
    print(f"\nms per step: fast path {1000 / f_rate:.1f}, env.step {1000 / s_rate:.1f}")


if __name__ == "__main__":
    main()
