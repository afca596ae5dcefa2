"""How much of a tidy trajectory is the prompt prefix every trajectory shares, in SmolLM2 tokens,
and how fast one core reads memory here (what bounds decoding: docs/benchmarks.md).

The prefix is what ``sft.shared_prefix`` / ``dpo.shared_prefix`` run once per batch
(``eto_core.prefix_sharing.shared_length`` over the first ``--tasks`` expert trajectories).

    taskset -c 1 .venv/bin/python benchmarks/shared_prefix_tokens.py --tasks 16
"""

from __future__ import annotations

import argparse
import time

import torch
from _experts import tidy_experts
from transformers import AutoTokenizer

from eto_core.prefix_sharing import shared_length
from eto_core.tokenization import encode_conversation


def read_gb_per_s(megabytes: int = 200, repeats: int = 5) -> float:
    """GB/s of one thread summing a float32 tensor too large for the caches."""
    torch.set_num_threads(1)
    data = torch.randn(megabytes * 250_000)
    data.sum()
    start = time.perf_counter()
    for _ in range(repeats):
        data.sum()
    return megabytes * 1e6 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default="/tmp/smollm2-model", help="converted SmolLM2 folder")
    parser.add_argument("--tasks", type=int, default=16)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    encoded = [encode_conversation(tokenizer, t.messages, t.num_prompt_messages, 4096)
               for t in tidy_experts(args.tasks, True)]
    shared = shared_length([torch.tensor(e.input_ids) for e in encoded], [torch.tensor(e.agent_mask) for e in encoded])
    lengths = [len(e.input_ids) for e in encoded]
    mean = sum(lengths) / len(lengths)
    print(f"{len(encoded)} tidy expert trajectories: shared prefix {shared} tokens, mean length {mean:.0f} "
          f"({shared / mean:.0%}), min {min(lengths)}, max {max(lengths)}")
    print(f"one-thread read bandwidth: {read_gb_per_s():.1f} GB/s")


if __name__ == "__main__":
    main()
