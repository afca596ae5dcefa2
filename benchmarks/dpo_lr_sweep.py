"""DPO learning-rate sweep for ETO iteration 1 on a recipe's SFT model and pairs.

Reuses the cached expert, SFT, exploration and pair artifacts of a state directory (runs them
first if missing), trains iteration 1's DPO once per learning rate and evaluates on seen and
unseen. Used to pick the default recipe's DPO settings:

    .venv/bin/python benchmarks/dpo_lr_sweep.py --config recipes/default.yaml --state .eto \
        --lrs 1e-4 3e-5 1e-5

Prints a markdown table (the one in docs/results.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from infra.runtime_env import set_runtime_defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/default.yaml")
    parser.add_argument("--state", default=".eto", help="state dir whose artifacts/ holds the cached stages")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-5, 1e-5])
    parser.add_argument("--epochs", type=float, default=1.0)
    args = parser.parse_args()
    set_runtime_defaults(args.state)
    os.environ.setdefault("TQDM_DISABLE", "1")

    from eto_core import stages
    from eto_core.config import load_recipe
    from eto_core.storage import ArtifactRef

    root = f"storage.root={Path(args.state) / 'artifacts'}"
    recipe = load_recipe(args.config, [root])
    store = stages.make_store(recipe, args.state)
    expert = stages.expert_stage(recipe, store, progress=False)
    base = stages.model_init_stage(recipe, store, expert.ref)
    sft = stages.sft_stage(recipe, store, base.ref, expert.ref)
    explored = stages.rollout_stage(recipe, store, sft.ref, stage="explore", split="train", iteration=1,
                               gen=recipe.explore, progress=False)
    pairs = stages.pairs_stage(recipe, store, expert.ref, explored.ref, 1)

    def evaluate(model_ref: ArtifactRef, r: object) -> list[str]:
        cells = []
        for split in ("seen", "unseen"):
            ev = stages.rollout_stage(r, store, model_ref, stage="evaluate", split=split,  # type: ignore[arg-type]
                                 iteration=0 if model_ref == sft.ref else 1, gen=recipe.evaluate, progress=False)
            cells += [f"{ev.metrics[f'{split}_avg_reward']:.3f}", f"{ev.metrics[f'{split}_success_rate']:.1%}"]
        return cells

    print(f"## DPO iteration 1 on {args.config} (seed {recipe.seed}), {int(pairs.metrics['pairs_lose'])} lose / "
          f"{int(pairs.metrics['pairs_win'])} win pairs, {args.epochs:g} epoch(s)\n")
    print("| model | DPO lr | final DPO loss | reward margin | chosen log-prob | seen reward | seen success "
          "| unseen reward | unseen success |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("| SFT | - | - | - | - | " + " | ".join(evaluate(sft.ref, recipe)) + " |")
    for lr in args.lrs:
        r = load_recipe(args.config, [root, f"dpo_iterations=[{{learning_rate: {lr}, num_train_epochs: {args.epochs}}}]"])
        dpo = stages.dpo_stage(r, store, sft.ref, pairs.ref, 1)
        m = dpo.metrics
        print(f"| ETO iter 1 | {lr:g} | {m['dpo_last_loss']:.3f} | {m['dpo_reward_margin']:.2f} | "
              f"{m['dpo_logps_chosen']:.1f} | " + " | ".join(evaluate(dpo.ref, r)) + " |")


if __name__ == "__main__":
    main()
