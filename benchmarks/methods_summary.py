"""Per-seed tables from the result files `benchmarks/methods.py` writes (docs/results.md).

`eto compare` gives each method's mean and spread over seeds; this prints what the mean hides:
every seed's reward / success per method row, the iteration each seed's selection chose, the
ETO-minus-SFT differences and each method's wall time.

    .venv/bin/python benchmarks/methods_summary.py --workdir .eto/methods
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

SPLITS = ("seen", "unseen")


def load(workdir: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """(method, seed) -> the method's result file."""
    out = {}
    for path in sorted(workdir.glob("*-seed*.json")):
        match = re.fullmatch(r"(.+)-seed(\d+)\.json", path.name)
        if match:
            out[(match.group(1), int(match.group(2)))] = json.loads(path.read_text())
    return out


def rows_of(method: str, result: dict[str, Any]) -> dict[str, dict[str, tuple[float, float]]]:
    """Row label -> split -> (avg reward, success rate), one row per stage/iteration."""
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    for s in result["summaries"]:
        it = s["iteration"]
        if method.startswith("eto") and method != "eto-no-sft":
            label = "sft" if it == 0 else f"{method} iter {it}"
        else:
            label = s["stage"] if it == 0 else f"{method} iter {it}"
        rows.setdefault(label, {})[s["split"]] = (s["avg_reward"], s["success_rate"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".eto/methods")
    args = parser.parse_args()
    results = load(Path(args.workdir))
    if not results:
        raise SystemExit(f"no <method>-seed<N>.json files in {args.workdir}: run benchmarks/methods.py first")
    seeds = sorted({seed for _, seed in results})
    methods = list(dict.fromkeys(m for m, _ in results))
    table: dict[str, dict[int, dict[str, tuple[float, float]]]] = {}
    for (method, seed), result in results.items():
        for label, splits in rows_of(method, result).items():
            table.setdefault(label, {})[seed] = splits

    cols = [f"{split} seed {seed}" for split in SPLITS for seed in seeds]
    print("Average reward / success rate per seed\n")
    print("| row | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for label, by_seed in table.items():
        cells = []
        for split in SPLITS:
            for seed in seeds:
                value = by_seed.get(seed, {}).get(split)
                cells.append(f"{value[0]:.3f} / {value[1]:.1%}" if value else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")

    print("\nMinus SFT, average reward per seed (seen, unseen)\n")
    print("| row | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|" + "---:|" * len(seeds))
    for label, by_seed in table.items():
        if label == "sft":
            continue
        cells = []
        for seed in seeds:
            sft, row = table.get("sft", {}).get(seed), by_seed.get(seed)
            if not sft or not row or not all(s in row for s in SPLITS):
                cells.append("-")
                continue
            cells.append(" / ".join(f"{row[s][0] - sft[s][0]:+.3f}" for s in SPLITS))
        print(f"| {label} | " + " | ".join(cells) + " |")

    selected = {seed: r["selection"] for (m, seed), r in results.items() if m == "eto-select" and r.get("selection")}
    if selected:
        print("\nIteration selection on dev (eto-select): the chosen iteration and the scores it compared\n")
        for seed, sel in sorted(selected.items()):
            scores = ", ".join(f"{x:.3f}" for x in sel.get("scores", []))
            print(f"- seed {seed}: iteration {sel.get('best_iteration')} (dev scores by iteration: {scores}); "
                  f"{sel.get('reason', '')}")

    print("\nWall time per method (s)\n")
    print("| method | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|" + "---:|" * len(seeds))
    for method in methods:
        cells = []
        for seed in seeds:
            r = results.get((method, seed))
            cells.append(f"{r.get('wall_seconds', r.get('seconds', 0.0)):.0f}" if r else "-")
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
