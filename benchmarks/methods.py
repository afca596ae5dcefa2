"""Every method on one recipe over several seeds, then `eto compare` over them (docs/results.md).

Per seed: `eto run` (SFT + ETO iterations), the baselines Best-of-N and RFT, ETO with iteration
selection on the dev split (it reuses every stage of `eto run` and adds the selection rollouts),
ETO with an SFT term in the DPO loss, ETO with step-level pairs added, ETO with k samples and self
pairs, ETO without SFT and RFT->ETO without experts (cheapest first, so a cut-short run
still has whole seeds), all in one MLflow store and artifact root so the methods of a seed share
their expert data, base model and SFT stage.

    .venv/bin/python benchmarks/methods.py --config recipes/default.yaml --seeds 0 1 2 --workdir .eto/methods

Each method's log (progress bars, Prefect's, and a failure's traceback) goes to
<workdir>/<method>-seed<N>.log; its results to <method>-seed<N>.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SAMPLED = ["--set", "pairs.samples_per_task={k}", "--set", "explore.temperature=0.7"]
# method -> (the eto subcommand, its extra arguments; {k} is --k)
METHODS: dict[str, tuple[list[str], list[str]]] = {
    "eto": (["run"], []),
    "best-of-n": (["baseline", "best-of-n"], []),
    "rft": (["baseline", "rft"], []),
    "eto-select": (["run"], ["--set", "selection.split=dev", "--set", "selection.tasks=40"]),
    "eto-sftw": (["run"], ["--set", "dpo.sft_weight=1.0"]),
    "eto-step": (["run"], ["--set", "pairs.level=both"]),
    "eto-k": (["run"], [*SAMPLED, "--set", "pairs.self_pairs=true"]),
    "eto-no-sft": (["baseline", "eto-no-sft"], SAMPLED),
    "rft-eto": (["baseline", "rft-eto"], SAMPLED),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/default.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--workdir", default=".eto/methods")
    parser.add_argument("--k", type=int, default=4,
                        help="samples per task of the sampled methods (eto-k, eto-no-sft, rft-eto)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe overrides for every method")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    common = ["--config", args.config, "--state-dir", str(work / "state"), "--artifact-root", str(work / "artifacts"),
              "--mlflow-uri", f"sqlite:///{work / 'mlflow.db'}"]
    for kv in args.overrides:
        common += ["--set", kv]
    for seed in args.seeds:
        for method in args.methods:
            command, extra = METHODS[method]
            extra = [a.format(k=args.k) for a in extra]
            cmd = [sys.executable, "-m", "flows.cli", *command, *common, "--seed", str(seed), *extra,
                   "--json", str(work / f"{method}-seed{seed}.json")]
            started = time.perf_counter()
            # The whole log is kept per method: a failure's cause sits above Prefect's shutdown lines.
            log = work / f"{method}-seed{seed}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("w") as err:
                done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
            status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode}; see {log})"
            print(f"seed {seed} {method}: {time.perf_counter() - started:.0f} s {status}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "flows.cli", "compare", "--mlflow-uri", f"sqlite:///{work / 'mlflow.db'}",
                    "--state-dir", str(work / "state"), "--out", str(work / "compare")], check=True)


if __name__ == "__main__":
    main()
