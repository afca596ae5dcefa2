"""DPO settings sweep for ETO iteration 1 on a recipe's SFT model and pairs, with diagnostics.

Reuses the cached expert, SFT, exploration and pair artifacts of a state directory (runs them
first if missing), trains iteration 1's DPO once per setting and scores each policy on a split:
``--dev N`` scores on N held-out training tasks (selection.split train_holdout: tasks after the
first data.train_tasks, never trained on or reported), which is where settings are tuned;
without it, seen and unseen (the old learning-rate table of docs/results.md). Each row also says
what DPO did to the model: reward accuracy and margin over all pairs, how far the chosen and the
rejected log-probs moved from the SFT model, and, with ``--drift``, KL(policy || SFT) per agent
token on the policy's own dev episodes.

    .venv/bin/python benchmarks/dpo_sweep.py --config recipes/smollm-tidy.yaml --state .eto --dev 40 \\
        --drift --configs '{learning_rate: 5.0e-5}' '{learning_rate: 2.0e-4}' '{learning_rate: 2.0e-4, beta: 0.5}'
    .venv/bin/python benchmarks/dpo_sweep.py --config recipes/default.yaml --state .eto --lrs 1e-4 3e-5 1e-5

Each --configs entry is a YAML mapping of DPO settings for iteration 1 (learning_rate, beta,
num_train_epochs, sft_weight, ...). Every DPO and rollout is a cached stage: a rerun, or a longer
sweep after a stop, reuses the finished ones. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from infra.runtime_env import set_runtime_defaults


def _config_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    configs = [yaml.safe_load(c) for c in args.configs]
    configs += [{"learning_rate": lr, "num_train_epochs": args.epochs} for lr in args.lrs]
    for c in configs:
        if not isinstance(c, dict):
            sys.exit(f"--configs: each entry must be a YAML mapping such as '{{learning_rate: 1.0e-4}}', got {c!r}")
    return configs or [{}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/default.yaml")
    parser.add_argument("--state", default=".eto", help="state dir whose artifacts/ holds the cached stages")
    parser.add_argument("--seed", type=int, default=None, help="the recipe's seed unless given")
    parser.add_argument("--configs", nargs="*", default=[], help="YAML mappings of iteration-1 DPO settings")
    parser.add_argument("--lrs", type=float, nargs="*", default=[], help="shorthand: one config per learning rate")
    parser.add_argument("--epochs", type=float, default=1.0, help="num_train_epochs of the --lrs configs")
    parser.add_argument("--dev", type=int, default=0, metavar="N",
                        help="score on N held-out training tasks instead of seen and unseen")
    parser.add_argument("--drift", action="store_true", help="KL(policy || SFT) on each policy's dev episodes")
    args = parser.parse_args()
    if args.drift and not args.dev:
        parser.error("--drift reads the dev episodes: give --dev N too")
    set_runtime_defaults(args.state)
    os.environ.setdefault("TQDM_DISABLE", "1")

    from eto_core import stages
    from eto_core.config import load_recipe
    from eto_core.storage import ArtifactRef

    base_overrides = [f"storage.root={Path(args.state) / 'artifacts'}"]
    if args.seed is not None:
        base_overrides.append(f"seed={args.seed}")
    if args.dev:
        base_overrides += ["selection.split=train_holdout", f"selection.tasks={args.dev}"]
    recipe = load_recipe(args.config, base_overrides)
    store = stages.make_store(recipe, args.state)
    expert = stages.expert_stage(recipe, store, progress=False)
    base = stages.model_init_stage(recipe, store, expert.ref)
    sft = stages.sft_stage(recipe, store, base.ref, expert.ref)
    explored = stages.rollout_stage(recipe, store, sft.ref, stage="explore", split="train", iteration=1,
                                    gen=recipe.explore, progress=False)
    pairs = stages.pairs_stage(recipe, store, expert.ref, explored.ref, 1)
    sft_model: Any = None

    def score(model_ref: ArtifactRef, r: Any, iteration: int) -> tuple[list[str], Any]:
        if args.dev:
            ev = stages.rollout_stage(r, store, model_ref, stage="select", split=stages.selection_split(r),
                                      iteration=iteration, gen=r.evaluate, progress=False)
            s = stages.rollout_summary(ev)
            return [f"{s.avg_reward:.3f}", f"{s.success_rate:.1%}", f"{s.mean_steps:.1f}"], ev
        cells = []
        for split in ("seen", "unseen"):
            ev = stages.rollout_stage(r, store, model_ref, stage="evaluate", split=split, iteration=iteration,
                                      gen=r.evaluate, progress=False)
            cells += [f"{ev.metrics[f'{split}_avg_reward']:.3f}", f"{ev.metrics[f'{split}_success_rate']:.1%}"]
        return cells, None

    def drift(model_ref: ArtifactRef, r: Any, episodes: Any) -> str:
        nonlocal sft_model
        from eto_core.policy_drift import policy_drift

        if sft_model is None:
            sft_model = stages.load_stage_model(recipe, store, sft.ref)[0].eval()
        policy, tokenizer = stages.load_stage_model(r, store, model_ref)
        report = policy_drift(policy.eval(), sft_model, tokenizer, stages.read_trajectories(store, episodes.ref),
                              max_length=r.dpo.max_length)
        return f"{report.kl_per_token:.4f} | {report.policy_logp_per_token - report.reference_logp_per_token:+.3f}"

    m = pairs.metrics
    where = f"{args.dev} held-out training tasks (dev)" if args.dev else "seen and unseen"
    print(f"## DPO iteration 1 on {args.config} (seed {recipe.seed}), scored on {where}\n")
    print(f"Pairs: {int(m['pairs_lose'])} lose, {int(m['pairs_win'])} win"
          + "".join(f", {int(m[k])} {k.removeprefix('pairs_').replace('_', ' ')}" for k in sorted(m)
                    if k.startswith("pairs_") and k not in ("pairs_lose", "pairs_win") and m[k]) + "\n")
    split_cols = ["dev reward", "dev success", "dev steps"] if args.dev else [
        "seen reward", "seen success", "unseen reward", "unseen success"]
    drift_cols = ["KL/token vs SFT", "Δ logp/token of own turns"] if args.drift else []
    cols = ["model", "DPO settings", "final loss", "reward acc.", "margin", "Δ logp chosen", "Δ logp rejected",
            "minutes", *split_cols, *drift_cols]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    cells, _ = score(sft.ref, recipe, 0)
    print("| SFT | - | - | - | - | - | - | - | " + " | ".join(cells) + (" | 0 | 0" if args.drift else "") + " |",
          flush=True)
    for config in _config_args(args):
        started = time.perf_counter()
        flow = "{" + ", ".join(f"{k}: {v}" for k, v in config.items()) + "}"
        # beta, learning_rate and num_train_epochs are per-iteration settings; the rest (sft_weight,
        # lora, ...) are DPO's own and apply to iteration 1 through the dpo section.
        per_iteration = {k: v for k, v in config.items() if k in ("beta", "learning_rate", "num_train_epochs")}
        own = [f"dpo.{k}={v}" for k, v in config.items() if k not in per_iteration]
        iteration = "{" + ", ".join(f"{k}: {v}" for k, v in per_iteration.items()) + "}"
        r = load_recipe(args.config, [*base_overrides, *own, f"dpo_iterations=[{iteration}]"])
        dpo = stages.dpo_stage(r, store, sft.ref, pairs.ref, 1)
        d = dpo.metrics
        beta = r.dpo_for_iteration(1).beta
        cells, episodes = score(dpo.ref, r, 1)
        row = ["ETO iter 1", flow, f"{d['dpo_last_loss']:.3f}", f"{d['dpo_reward_accuracy']:.2f}",
               f"{d['dpo_reward_margin']:.2f}",
               # The implicit rewards are beta * (policy - reference) summed log-probs: divided by
               # beta, how many nats each side's log-prob moved.
               f"{d['dpo_rewards_chosen'] / beta:+.2f}", f"{d['dpo_rewards_rejected'] / beta:+.2f}",
               f"{(time.perf_counter() - started) / 60:.1f}", *cells]
        if args.drift:
            row.append(drift(dpo.ref, r, episodes))
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
