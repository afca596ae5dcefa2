"""DPO step time with precomputed reference log-probs vs a frozen reference run on every step.

Both modes train the same model (rebuilt from the same seed each time) on the same pairs with the
same settings, alternating mode by mode over a few repeats in one process, so machine noise hits
both alike. Pairs are real ``tidy`` ones: the expert's trajectory (chosen) against a scripted
agent that only looks around (rejected, cut as the pair stage cuts it). The model is the recipe's
``model.tiny`` (randomly initialised: step time does not depend on what the weights know);
``--hidden-size`` etc. make it larger.

    .venv/bin/python benchmarks/dpo_reference.py --pairs 16 --epochs 3 --repeats 3

Prints a markdown table (the one in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is imported; the training step bars would drown the table
import statistics
import tempfile
import time
from collections.abc import Sequence

import torch
from _experts import experts_and_tokenizer

from eto_core.config import load_recipe
from eto_core.dpo import DPOSettings, train_dpo
from eto_core.modeling import build_tiny_model
from eto_core.pairs import build_pairs
from eto_core.records import Message
from eto_core.rollout import run_episodes


class LookAround:
    """A scripted agent that never acts on the task: every episode fails, so each task gives a pair."""

    name = "look-around"
    model_uri = "scripted"

    def generate(self, conversations: Sequence[list[Message]]) -> list[str | None]:
        return ["Thought: I will look around first.\nAction: look" for _ in conversations]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/default.yaml", help="recipe for env, model.tiny and dpo")
    parser.add_argument("--pairs", type=int, default=16, help="training tasks turned into pairs")
    parser.add_argument("--epochs", type=float, default=3.0, help="DPO epochs (ETO: 3; the default recipe: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode, alternating")
    parser.add_argument("--hidden-size", type=int, default=None)
    parser.add_argument("--intermediate-size", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads; 1 keeps timings steady on a shared machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # per-step logs and "pair truncated" warnings would drown the table

    recipe = load_recipe(args.config)
    make, experts, tokenizer = experts_and_tokenizer(recipe, args.pairs)
    explored = run_episodes(make, [t.task_id for t in experts], LookAround(), env_name=recipe.env.name,
                            split="train", source="explore", iteration=1, one_shot=recipe.env.one_shot,
                            progress=False)
    pairs, _ = build_pairs(experts, explored, iteration=1, cut_extra_rounds=recipe.pair_cut_extra_rounds)
    sizes = {"hidden_size": args.hidden_size, "intermediate_size": args.intermediate_size,
             "num_hidden_layers": args.layers, "num_attention_heads": args.heads}
    tiny = recipe.model.tiny.model_copy(update={k: v for k, v in sizes.items() if v is not None})
    base = recipe.dpo_for_iteration(1)
    epochs = args.epochs

    def settings(precompute: bool) -> DPOSettings:
        return base.model_copy(update={"num_train_epochs": epochs, "precompute_ref_logps": precompute})

    lengths = [len(tokenizer.apply_chat_template(p.prompt + side, tokenize=True, return_dict=False))  # type: ignore[arg-type]
               for p in pairs for side in (p.chosen, p.rejected)]
    params = sum(p.numel() for p in build_tiny_model(tiny, tokenizer).parameters())
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.repeats):
            for precompute in ((True, False) if r % 2 == 0 else (False, True)):
                model = build_tiny_model(tiny, tokenizer)
                started = time.perf_counter()
                result = train_dpo(model, tokenizer, pairs, settings(precompute), out)
                whole = time.perf_counter() - started
                runs[precompute].append({
                    "steps": result.num_steps,
                    "ref": result.ref_logps_seconds,
                    "train": result.runtime_s,
                    "step_ms": 1000 * result.runtime_s / result.num_steps,
                    "with_ref": result.runtime_s + (result.ref_logps_seconds if precompute else 0.0),
                    "whole": whole,
                    "loss": result.last_loss,
                })

    print(f"## DPO reference modes: {len(pairs)} tidy pairs ({min(lengths)}-{max(lengths)} tokens per side), "
          f"model.tiny {tiny.hidden_size}x{tiny.num_hidden_layers} layers ({params / 1e6:.2f}M params, "
          f"vocab {len(tokenizer)}), "
          f"batch {base.per_device_train_batch_size}, {epochs:g} epoch(s), {args.repeats} repeats, "
          f"{torch.get_num_threads()} torch threads\n")
    print("| reference | steps | reference scoring s | training s | per step ms | training + precompute s "
          "| whole train_dpo s | last loss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    med = {k: {f: statistics.median(run[f] for run in v) for f in v[0]} for k, v in runs.items()}
    labels = {True: "precomputed once (default)", False: "frozen copy, every step"}
    for precompute, label in labels.items():
        m = med[precompute]
        print(f"| {label} | {m['steps']:.0f} | {m['ref']:.2f} | {m['train']:.2f} | {m['step_ms']:.0f} | "
              f"{m['with_ref']:.2f} | {m['whole']:.2f} | {m['loss']:.4f} |")

    def ratio(field: str) -> str:
        each = ", ".join(f"{b[field] / a[field]:.2f}" for a, b in zip(runs[True], runs[False], strict=True))
        return f"**{med[False][field] / med[True][field]:.2f}x** (repeats: {each})"

    print(f"\nprecomputed vs every step: per step {ratio('step_ms')}; training + precompute {ratio('with_ref')}; "
          f"whole train_dpo call {ratio('whole')}. Every-step mode spends "
          f"{med[False]['ref'] / med[False]['train']:.0%} of its training time in reference forwards; "
          f"the one-off precompute is {med[True]['ref'] / med[True]['train']:.0%} of the precomputed run's training time.")


if __name__ == "__main__":
    main()
