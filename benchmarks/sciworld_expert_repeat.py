"""ScienceWorld's expert stage collected more than once: which gold paths differ between collections.

Runs the expert collection (the pipeline's `collect_expert`, fresh environments and JVMs each
time) on the first ``--tasks`` training tasks of a recipe, ``--repeats`` times, and prints every
task whose messages differ between collections, with the first differing message. Each
collection is what a fresh workdir's expert stage would publish (docs/environments.md, "Expert").

    .venv/bin/python benchmarks/sciworld_expert_repeat.py --config recipes/sciworld.yaml --tasks 200
"""

from __future__ import annotations

import argparse
import time

from eto_core import stages
from eto_core.config import load_recipe
from eto_core.experts import collect_expert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/sciworld.yaml")
    parser.add_argument("--tasks", type=int, default=200, help="the first N training tasks")
    parser.add_argument("--repeats", type=int, default=2, help="collections to compare")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    recipe = load_recipe(args.config, args.overrides)
    tasks = stages.split_tasks(recipe, "train", "expert")[: args.tasks]
    runs: list[dict[str, list[str]]] = []
    for i in range(args.repeats):
        started = time.perf_counter()
        trajs, skipped = collect_expert(stages.env_factory(recipe), tasks, env_name=recipe.env.name, split="train",
                                        one_shot=recipe.env.one_shot, progress=True)
        runs.append({t.task_id: [m["content"] for m in t.messages] for t in trajs})
        print(f"collection {i + 1}: {len(trajs)} paths, {len(skipped)} skipped, {time.perf_counter() - started:.0f} s")
    differing = 0
    for task in tasks:
        paths = [run.get(task) for run in runs]
        if all(p == paths[0] for p in paths):
            continue
        differing += 1
        first, other = paths[0] or [], next(p for p in paths if p != paths[0]) or []
        at = next((j for j, (a, b) in enumerate(zip(first, other, strict=False)) if a != b), min(len(first), len(other)))
        print(f"\n{task}: differs at message {at}")
        print(f"  1: {(first[at] if at < len(first) else '<ended>')[:200]!r}")
        print(f"  2: {(other[at] if at < len(other) else '<ended>')[:200]!r}")
    print(f"\n{differing} of {len(tasks)} tasks differ between {args.repeats} collections")


if __name__ == "__main__":
    main()
