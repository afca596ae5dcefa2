"""Rollout throughput: the batched engine vs one episode at a time, and the prefix KV cache.

(a) One episode at a time with one model call per step (the official ETO code's pattern: one
request per step per episode) versus the batched engine (every live episode's turn in one
``generate`` call per engine step, finished episodes refilled from the queue).
(b) The batched engine with and without the prefix KV cache (policy.prefix_cache), with the
default recipe's prompt and with ETO's one-shot prompt (env.one_shot), where the shared prefix
is longer.

All modes roll out the same model (the recipe's SFT stage, computed or found by key under
--artifact-root) greedily on the same training tasks, alternating mode by mode for --repeats
rounds in this one process, and must produce identical trajectories.

    .venv/bin/python benchmarks/rollout_engine.py --config recipes/default.yaml --artifact-root .eto/artifacts
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from eto_core import stages
from eto_core.config import Recipe, load_recipe
from eto_core.policy import LocalHFPolicy
from eto_core.records import Trajectory
from eto_core.rollout import run_episodes


def rollout(recipe: Recipe, model: object, tokenizer: object, tasks: list[str], batch: int,
            prefix_cache: bool) -> tuple[float, list[Trajectory], LocalHFPolicy]:
    gen = recipe.explore.model_copy(update={"batch_size": batch})
    policy = LocalHFPolicy(model, tokenizer, gen, prefix_cache=prefix_cache)  # type: ignore[arg-type]
    started = time.perf_counter()
    trajs = run_episodes(stages.env_factory(recipe), tasks, policy, env_name=recipe.env.name, split="train",
                         source="explore", iteration=1, one_shot=recipe.env.one_shot, batch_size=batch,
                         progress=False)
    return time.perf_counter() - started, trajs, policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/default.yaml")
    parser.add_argument("--artifact-root", default=".eto/artifacts",
                        help="where the recipe's SFT stage is found by key (or computed and published)")
    parser.add_argument("--tasks", type=int, default=40, help="training tasks rolled out per mode")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds over the modes")
    parser.add_argument("--skip-sequential", action="store_true", help="only (b)")
    args = parser.parse_args()

    recipe = load_recipe(args.config, [f"storage.root={Path(args.artifact_root).resolve()}"])
    store = stages.make_store(recipe, ".eto")
    expert = stages.expert_stage(recipe, store, progress=False)
    base = stages.model_init_stage(recipe, store, expert.ref)
    sft = stages.sft_stage(recipe, store, base.ref, expert.ref)
    model, tokenizer = stages.load_stage_model(recipe, store, sft.ref)
    tasks = stages.split_tasks(recipe, "train", "explore")[: args.tasks]
    batch = min(recipe.explore.batch_size, len(tasks))
    one_shot = recipe.model_copy(update={"env": recipe.env.model_copy(update={"one_shot": True})})

    modes = {
        "one episode at a time, 1 call per step": (recipe, 1, False),
        f"batched engine (batch {batch})": (recipe, batch, False),
        f"batched engine (batch {batch}) + prefix KV cache": (recipe, batch, True),
        f"one-shot prompt: batched engine (batch {batch})": (one_shot, batch, False),
        f"one-shot prompt: batched engine (batch {batch}) + prefix KV cache": (one_shot, batch, True),
    }
    if args.skip_sequential:
        modes.pop("one episode at a time, 1 call per step")
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    stats: dict[str, tuple[int, int, int, list[Trajectory]]] = {}
    for _ in range(args.repeats):
        for name, (r, b, prefix) in modes.items():
            s, trajs, policy = rollout(r, model, tokenizer, tasks, b, prefix)
            seconds[name].append(s)
            steps = sum(t.num_steps for t in trajs)
            stats[name] = (steps, policy.generated_tokens, policy.prefilled_tokens, trajs)

    print(f"recipe {args.config}, {len(tasks)} training tasks, greedy, torch threads {torch.get_num_threads()}, "
          f"{args.repeats} alternating rounds (median shown)\n")
    print("| mode | episodes/s | generated tokens/s | prompt tokens encoded | steps | s (median) | vs one at a time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    baseline = next(iter(modes))
    for name in modes:
        s = statistics.median(seconds[name])
        steps, generated, prefilled, _ = stats[name]
        ratio = statistics.median(seconds[baseline]) / s if not args.skip_sequential else float("nan")
        print(f"| {name} | {len(tasks) / s:.2f} | {generated / s:.0f} | {prefilled:,} | {steps} | {s:.1f} | "
              f"{ratio:.1f}x |")
    plain = [stats[n][3] for n, (r, _, _) in modes.items() if r is recipe]
    shot = [stats[n][3] for n, (r, _, _) in modes.items() if r is one_shot]
    same = all(t == plain[0] for t in plain) and all(t == shot[0] for t in shot)
    print(f"\nidentical trajectories across modes (same prompt): {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
