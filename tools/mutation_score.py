"""Killed / total mutants per module after `mutmut run` (`make mutation`, docs/testing.md).

Reads mutmut's per-file results (mutants/<file>.meta) and prints the score of each mutated file,
of the two groups issue 29 sets a bar for (the pair builder; the DPO loss, log-probs and agent
masks), and every mutant that was not killed. A timeout counts as killed: the mutant did not pass
the tests (encode_conversation's span walk with ``j = 1`` loops forever). A mutant that was never
run ("not checked": an interrupted run) counts against the score, so a partial run cannot pass.
Exits 1 when a group scores under --min percent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mutmut.stats import status_by_exit_code

GROUPS = {
    "pair builder": ["eto_core/pairs.py"],
    "DPO loss + masks": ["eto_core/dpo.py", "eto_core/logprobs.py", "eto_core/tokenization.py"],
}
CAUGHT = {"killed", "timeout"}


def load(mutants: Path, module: str) -> dict[str, str]:
    """Mutant name -> mutmut's status for one mutated file."""
    meta = mutants / f"{module}.meta"
    if not meta.is_file():
        raise SystemExit(f"{meta} is missing: run `make mutation` (mutmut run) first.")
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def score(statuses: dict[str, str]) -> tuple[int, int]:
    return sum(s in CAUGHT for s in statuses.values()), len(statuses)


def line(label: str, caught: int, total: int) -> str:
    return f"{label:<32} {caught:>6} / {total:<6} {100 * caught / total if total else 0.0:6.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"), help="mutmut's working folder")
    parser.add_argument("--min", type=float, default=85.0, help="lowest passing score of a group, percent")
    args = parser.parse_args(argv)

    by_module = {m: load(args.mutants, m) for group in GROUPS.values() for m in group}
    print(f"{'module':<32} {'killed / total':>15}  score")
    for module, statuses in by_module.items():
        print(line(module, *score(statuses)))
    failed = []
    for group, modules in GROUPS.items():
        merged = {k: v for m in modules for k, v in by_module[m].items()}
        caught, total = score(merged)
        print(line(group, caught, total))
        if total == 0 or 100 * caught / total < args.min:
            failed.append(group)
    survivors = [(name, s) for statuses in by_module.values() for name, s in statuses.items() if s not in CAUGHT]
    unrun = sum(s == "not checked" for _, s in survivors)
    if unrun:
        print(f"\n{unrun} mutants were never run (an interrupted `mutmut run`?)")
    print(f"\nnot killed ({len(survivors) - unrun}; `mutmut show NAME` for the diff, docs/testing.md for why):")
    for name, status in survivors:
        if status != "not checked":
            print(f"  {name}: {status}")
    if failed:
        print(f"\nunder {args.min:g}%: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
