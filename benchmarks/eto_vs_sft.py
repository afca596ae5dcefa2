"""ETO iteration 1 (and later) versus SFT over several seeds, plus the cached-rerun time.

Runs ``eto run`` once per seed (each a separate state dir, so nothing is shared between
seeds), then reruns the first seed to time a fully cached run, and prints a markdown report.

    .venv/bin/python benchmarks/eto_vs_sft.py --config recipes/default.yaml --seeds 0 1 2

The numbers in docs/results.md were printed by this script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run(config: str, seed: int, state: Path) -> dict:
    out = state / f"result-seed{seed}.json"
    cmd = [
        sys.executable, "-m", "flows.cli", "run", "--config", config, "--seed", str(seed),
        "--state-dir", str(state), "--artifact-root", str(state / "artifacts"),
        "--mlflow-uri", f"sqlite:///{state / 'mlflow.db'}", "--json", str(out),
    ]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    result["wall_seconds"] = time.perf_counter() - started
    return result


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/default.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default=".eto/bench-eto-vs-sft")
    args = parser.parse_args()
    work = Path(args.workdir)

    results = {}
    for seed in args.seeds:
        results[seed] = run(args.config, seed, work / f"seed{seed}")
        print(f"seed {seed}: {results[seed]['wall_seconds']:.1f} s", file=sys.stderr)
    first = args.seeds[0]
    rerun = run(args.config, first, work / f"seed{first}")

    rows: dict[tuple[int, str], dict[str, list[float]]] = {}
    for res in results.values():
        for s in res["summaries"]:
            cell = rows.setdefault((s["iteration"], s["split"]), {"reward": [], "success": []})
            cell["reward"].append(s["avg_reward"])
            cell["success"].append(s["success_rate"])
    iterations = sorted({it for it, _ in rows})
    print(f"## {args.config}, seeds {args.seeds} (mean ± sample std)\n")
    print("| model | seen reward | seen success | unseen reward | unseen success |")
    print("|---|---|---|---|---|")
    for it in iterations:
        label = "SFT" if it == 0 else f"ETO iter {it}"
        cells = []
        for split in ("seen", "unseen"):
            c = rows[(it, split)]
            cells += [fmt(c["reward"]), fmt(c["success"])]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nPer seed, ETO iteration 1 minus SFT (average reward):\n")
    print("| seed | seen | unseen |")
    print("|---|---|---|")
    for seed, res in results.items():
        by = {(s["iteration"], s["split"]): s["avg_reward"] for s in res["summaries"]}
        print(f"| {seed} | {by[(1, 'seen')] - by[(0, 'seen')]:+.3f} | {by[(1, 'unseen')] - by[(0, 'unseen')]:+.3f} |")
    print("\nWall time per run (s): " + ", ".join(f"seed {s}: {r['wall_seconds']:.0f}" for s, r in results.items()))
    ratio = rerun["wall_seconds"] / results[first]["wall_seconds"]
    print(f"Cached rerun of seed {first}: {rerun['wall_seconds']:.1f} s = {ratio:.1%} of its first run "
          f"({results[first]['wall_seconds']:.1f} s); same results: {rerun['summaries'] == results[first]['summaries']}")


if __name__ == "__main__":
    main()
