"""Speed of the webshop environment on synthetic catalogues: generation, index, search, steps.

For each catalogue size: generate the files, construct the env cold (parse + BM25 build),
construct it again as a fresh process would (parse + index loaded from the disk cache),
time uncached searches with goal instructions, then replay expert episodes with the search
cache cleared (every episode's search is a real one) and report steps per second.

    .venv/bin/python benchmarks/webshop_env.py                    # 2,000 and 100,000 products
    .venv/bin/python benchmarks/webshop_env.py --sizes 2000 --queries 100

The numbers in docs/benchmarks.md were printed by this script.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from environments.webshop import WebShopEnv
from environments.webshop.data import forget_loaded_catalogues
from environments.webshop.expert import search_keywords
from environments.webshop.search import forget_loaded_indexes
from environments.webshop.synthetic import DEFAULT_PRODUCTS, generate


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(size: int, workdir: Path, queries: int, episodes: int) -> dict[str, float]:
    data, cache = workdir / f"shop-{size}", workdir / f"cache-{size}"
    started = time.perf_counter()
    generate(data, products=size, seed=0)
    generated = time.perf_counter() - started

    forget_loaded_catalogues()
    forget_loaded_indexes()
    started = time.perf_counter()
    WebShopEnv(data, cache_dir=cache)
    cold = time.perf_counter() - started
    forget_loaded_catalogues()
    forget_loaded_indexes()
    started = time.perf_counter()
    env = WebShopEnv(data, cache_dir=cache)
    warm = time.perf_counter() - started

    goals = env.catalogue.goals
    picks = [goals[i * len(goals) // min(queries, len(goals))] for i in range(min(queries, len(goals)))]
    latencies = []
    for goal in picks:
        started = time.perf_counter()
        env.index.rank(search_keywords(goal))
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = [t for split in ("train", "seen", "unseen") for t in env.tasks(split)]
    tasks = [tasks[i * len(tasks) // min(episodes, len(tasks))] for i in range(min(episodes, len(tasks)))]
    plans = {t: env.expert(t) for t in tasks}
    env.index.search.cache_clear()
    steps = 0
    started = time.perf_counter()
    for task, actions in plans.items():
        env.reset(task)
        for action in actions or ():
            env.step(action)
            steps += 1
    elapsed = time.perf_counter() - started
    return {
        "products": size,
        "goals": len(goals),
        "generate_s": generated,
        "cold_s": cold,
        "warm_s": warm,
        "search_p50_ms": statistics.median(latencies),
        "search_p95_ms": percentile(latencies, 0.95),
        "steps": steps,
        "steps_per_s": steps / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[DEFAULT_PRODUCTS, 100_000])
    parser.add_argument("--queries", type=int, default=300, help="uncached searches timed per catalogue")
    parser.add_argument("--episodes", type=int, default=300, help="expert episodes replayed per catalogue")
    parser.add_argument(
        "--workdir", default=None, help="where catalogues and indexes go (default: a temp dir)"
    )
    args = parser.parse_args()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-webshop-"))
    rows = []
    try:
        for size in args.sizes:
            rows.append(measure(size, workdir, args.queries, args.episodes))
            print(f"{size} products done", file=sys.stderr)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        "| products | goals | generate (s) | env cold: parse + BM25 build (s) | env warm: parse + index load (s) "
        "| search p50 (ms) | search p95 (ms) | steps/s (expert episodes) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['products']:,} | {r['goals']:,} | {r['generate_s']:.1f} | {r['cold_s']:.1f} | {r['warm_s']:.1f} "
            f"| {r['search_p50_ms']:.2f} | {r['search_p95_ms']:.2f} | {r['steps_per_s']:,.0f} ({r['steps']} steps) |"
        )


if __name__ == "__main__":
    main()
