"""The same exploration rollout on Prefect's thread pool and on a 2-worker local Dask cluster.

The rollout is split into shards (explore.shard_size) that the flow submits as Prefect tasks
to the recipe's runner (docs/pipeline.md). Every mode explores the same tasks with the same SFT
model (the recipe's SFT stage, found by key under --artifact-root or computed there) into its
own fresh artifact root, so nothing is reused between modes; the trajectories must be identical.

    .venv/bin/python benchmarks/runner_scaleout.py --config recipes/default.yaml --artifact-root .eto/artifacts
    .venv/bin/python benchmarks/runner_scaleout.py --config recipes/smollm-tidy.yaml --artifact-root <workdir>/.eto/artifacts \
        --shard-size 16 --set data.explore_tasks=32 --no-dask
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="eto-bench-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow  # noqa: E402

from eto_core import stages  # noqa: E402
from eto_core.config import Recipe, load_recipe  # noqa: E402
from eto_core.storage import ArtifactRef  # noqa: E402
from flows.pipeline import rollout  # noqa: E402
from tasks.runners import make_task_runner  # noqa: E402


@flow(name="bench-explore")
def explore(recipe: Recipe, model_uri: str, model_digest: str, state_dir: str) -> dict:
    store = stages.make_store(recipe, state_dir)
    with make_task_runner(recipe.runner) as runner:
        result = rollout(recipe, store, ArtifactRef(model_uri, model_digest), stage="explore", split="train",
                          iteration=1, gen=recipe.explore, tracker=None, parent=None, runner=runner)
    return {"digest": result.ref.digest, "metrics": result.metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/default.yaml")
    parser.add_argument("--artifact-root", default=".eto/artifacts")
    parser.add_argument("--shard-size", type=int, default=40)
    parser.add_argument("--workdir", default=None, help="scratch artifact roots (default: a temp folder)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override, e.g. data.explore_tasks=16 (repeatable)")
    parser.add_argument("--no-dask", action="store_true", help="skip the local Dask cluster mode")
    args = parser.parse_args()

    recipe = load_recipe(args.config, [f"storage.root={Path(args.artifact_root).resolve()}",
                                       f"explore.shard_size={args.shard_size}", *args.set])
    store = stages.make_store(recipe, ".eto")
    expert = stages.expert_stage(recipe, store, progress=False)
    base = stages.model_init_stage(recipe, store, expert.ref)
    sft = stages.sft_stage(recipe, store, base.ref, expert.ref)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="eto-bench-runner-"))
    cores = os.cpu_count() or 1
    modes = {
        "thread pool, 1 worker (the default), torch threads = all cores": {"runner": {"kind": "thread", "workers": 1}},
        "thread pool, 2 workers, 1 torch thread each": {"runner": {"kind": "thread", "workers": 2, "torch_threads": 1}},
        "local Dask cluster, 2 worker processes, 1 torch thread each": {
            "runner": {"kind": "dask", "workers": 2, "torch_threads": 1}},
    }
    if args.no_dask:
        modes = {name: mode for name, mode in modes.items() if mode["runner"]["kind"] != "dask"}
    rows = []
    digests = set()
    n = stages.task_count(recipe, "train", "explore")
    for i, (name, update) in enumerate(modes.items()):
        root = work / f"mode{i}"
        shutil.rmtree(root, ignore_errors=True)
        r = recipe.model_copy(update={
            "runner": recipe.runner.model_copy(update=update["runner"]),
            "storage": recipe.storage.model_copy(update={"root": str(root)}),
        })
        started = time.perf_counter()
        out = explore(r, sft.ref.uri, sft.ref.digest, str(work / f"state{i}"))
        seconds = time.perf_counter() - started
        digests.add(out["digest"])
        rows.append((name, seconds))
    print(f"recipe {args.config}: exploration of {n} training tasks in shards of {args.shard_size}, "
          f"{cores} CPU cores, greedy\n")
    print("| runner | wall s (flow run, incl. start-up) | episodes/s | vs default |\n|---|---:|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {n / seconds:.2f} | {rows[0][1] / seconds:.2f}x |")
    print(f"\nidentical trajectories (one content digest): {'yes' if len(digests) == 1 else 'NO'}")


if __name__ == "__main__":
    main()
