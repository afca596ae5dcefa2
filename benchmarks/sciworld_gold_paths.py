"""ScienceWorld gold paths: length and final score per task type (the data behind the step caps).

For each of ETO's 24 task types, samples the first ``--train/--dev/--test`` variations of
ScienceWorld's splits, generates the gold action sequence, replays it through the adapter and
records its length and score. Prints the markdown table in docs/environments.md, including the
step cap each task type gets from ``DEFAULT_STEP_CAPS``'s rule.

    .venv/bin/python benchmarks/sciworld_gold_paths.py --train 4 --dev 3 --test 3
"""

from __future__ import annotations

import argparse
import math
import statistics

from environments.sciworld import DEFAULT_STEP_CAPS
from environments.sciworld.jvm import Simulator
from environments.sciworld.splits import TASK_TYPES


def cap_rule(median_length: float) -> int:
    return max(10, 5 * math.ceil((1.5 * median_length + 5) / 5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=4)
    parser.add_argument("--dev", type=int, default=3)
    parser.add_argument("--test", type=int, default=3)
    parser.add_argument("--heap", default="512m")
    args = parser.parse_args()
    sim = Simulator(heap=args.heap)
    print("| task type | variations train/dev/test | gold length median (max) | not full score | cap (rule) | cap (used) |")
    print("|---|---|---:|---:|---:|---:|")
    try:
        for t in TASK_TYPES:
            sim.load(t, 0, "", False)
            var = sim.variations()
            lengths, not_full = [], 0
            for split, n in (("train", args.train), ("dev", args.dev), ("test", args.test)):
                for v in var[split][:n]:
                    sim.load(t, v, "", True)
                    gold = sim.gold_actions()
                    sim.load(t, v, "", False)
                    sim.reset()
                    score = 0.0
                    for action in gold:
                        score = sim.step(action).score
                    lengths.append(len(gold))
                    not_full += score < 1.0
            med = statistics.median(lengths)
            counts = "/".join(str(len(var[s])) for s in ("train", "dev", "test"))
            print(f"| {t} | {counts} | {med:g} ({max(lengths)}) | {not_full} | {cap_rule(med)} | {DEFAULT_STEP_CAPS[t]} |",
                  flush=True)
    finally:
        sim.close()


if __name__ == "__main__":
    main()
