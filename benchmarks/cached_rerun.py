"""A fully cached pipeline rerun versus the first run (issue target: the rerun <= 5%).

Runs ``eto run`` twice on one recipe with its own Prefect state, artifact root and MLflow store
(nothing shared with other runs), and prints both wall times, their ratio, and whether the
second run produced the same results. The second run finds every stage's artifact by key:
what remains is process start-up, Prefect and MLflow bookkeeping and the cache lookups.

    .venv/bin/python benchmarks/cached_rerun.py --config recipes/default.yaml
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def eto_run(config: str, state: Path, result: Path, extra: list[str]) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "flows.cli", "run", "--config", config, "--state-dir", str(state),
           "--artifact-root", str(state / "artifacts"), "--mlflow-uri", f"sqlite:///{state / 'mlflow.db'}",
           "--json", str(result), *extra]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/default.yaml")
    parser.add_argument("--workdir", default=".eto/bench-cached-rerun", help="wiped first")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe overrides passed to both runs")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    extra = [a for kv in args.overrides for a in ("--set", kv)]
    first_s, first = eto_run(args.config, work, work / "first.json", extra)
    second_s, second = eto_run(args.config, work, work / "second.json", extra)
    same = first["summaries"] == second["summaries"] and first["final_model"] == second["final_model"]
    print(f"recipe: {args.config} {' '.join(args.overrides)}\n")
    print("| run | wall s |\n|---|---:|")
    print(f"| first (computes every stage) | {first_s:.1f} |")
    print(f"| rerun (every stage cached) | {second_s:.1f} |")
    print(f"\nrerun / first = {second_s / first_s:.1%}; same results and final model: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
