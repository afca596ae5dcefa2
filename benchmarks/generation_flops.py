"""Achieved generation FLOP/s of LocalHFPolicy vs the matmul FLOP/s this CPU reaches.

The model is the recipe's ``model.tiny`` (randomly initialised: the arithmetic per token does not
depend on what the weights know), the conversations are real ``tidy`` ones: each expert
trajectory cut after a varying number of rounds, so prompts are as long as they are mid-episode.
Useful FLOPs per call, with N the non-embedding parameters, L layers, d hidden size:

    2 * N * (prefilled + generated tokens) + 4 * L * d * (sum over those tokens of the context each attends to)

Prefilled tokens are the prompt tokens the model ran (a prefix served from the prefix cache is
not counted), generated tokens the new ones up to eos. Padding, the tied LM head (2 * vocab * d
per generated token) and the prefix cache's one-off encode are not counted. The physical limit
is ``torch.matmul`` on large fp32 square matrices (2 n^3 FLOPs), best of several.

    .venv/bin/python benchmarks/generation_flops.py --batch-sizes 1 8 32 --conversations 32

Prints a markdown table (the one in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is imported

import torch
from _experts import experts_and_tokenizer

from eto_core.config import load_recipe
from eto_core.modeling import build_tiny_model
from eto_core.policy import LocalHFPolicy
from eto_core.records import Message


def matmul_peak(sizes: list[int], repeats: int) -> tuple[float, int]:
    """Best fp32 matmul FLOP/s over square sizes, and the size that reached it."""
    best, best_n = 0.0, 0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            rate = 2 * n**3 / (time.perf_counter() - start)
            if rate > best:
                best, best_n = rate, n
    return best, best_n


def attended(first: int, last: int) -> float:
    """Sum of the context lengths first..last (a token at position k attends to k tokens)."""
    return (last * (last + 1) - (first - 1) * first) / 2 if last >= first else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/default.yaml", help="recipe for env, model.tiny and explore")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--conversations", type=int, default=32, help="conversations generated per batch size")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the conversations; the best counts")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads, for generation and matmul alike; 1 keeps timings steady on a shared machine")
    parser.add_argument("--no-prefix-cache", action="store_true", help="off: every row re-encodes the shared prefix")
    parser.add_argument("--matmul-sizes", type=int, nargs="+", default=[1024, 2048, 3072])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)

    recipe = load_recipe(args.config)
    make, experts, tokenizer = experts_and_tokenizer(recipe, args.conversations)
    model = build_tiny_model(recipe.model.tiny, tokenizer).eval()
    conversations: list[list[Message]] = []
    for i, t in enumerate(experts):
        rounds = (len(t.messages) - t.num_prompt_messages) // 2
        conversations.append(t.messages[: t.num_prompt_messages + 2 * (i % rounds)])

    cfg = model.config
    layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    embed = model.get_input_embeddings().weight.numel()
    non_embed = sum(p.numel() for p in model.parameters()) - embed  # the LM head is tied to the embedding
    attn_coef = 4 * layers * hidden

    peak, peak_n = matmul_peak(args.matmul_sizes, repeats=5)

    rows = []
    for bs in args.batch_sizes:
        best: dict[str, float] | None = None
        for _ in range(args.repeats):
            policy = LocalHFPolicy(model, tokenizer, recipe.explore.model_copy(update={"batch_size": bs}),
                                   prefix_cache=not args.no_prefix_cache)
            policy.generate(conversations[:bs])  # warm-up: kernels, and the prefix cache's one-off encode
            stats = {"seconds": 0.0, "flops": 0.0, "prefilled": 0.0, "generated": 0.0, "prompt": 0.0}
            for start in range(0, len(conversations), bs):
                chunk = conversations[start : start + bs]
                lengths = [len(policy.encode(c)) for c in chunk]
                pre0, gen0 = policy.prefilled_tokens, policy.generated_tokens
                started = time.perf_counter()
                policy.generate(chunk)
                stats["seconds"] += time.perf_counter() - started
                prefilled = policy.prefilled_tokens - pre0
                generated = policy.generated_tokens - gen0
                cached = (sum(lengths) - prefilled) / len(chunk)  # the prefix every row of the call reused
                new = generated / len(chunk)  # rows are counted at the mean new length
                context = sum(attended(int(cached) + 1, n) + attended(n + 1, int(n + new)) for n in lengths)
                stats["flops"] += 2 * non_embed * (prefilled + generated) + attn_coef * context
                stats["prefilled"] += prefilled
                stats["generated"] += generated
                stats["prompt"] += sum(lengths)
            if best is None or stats["seconds"] < best["seconds"]:
                best = stats
        assert best is not None
        rows.append((bs, best))

    # What the model's own matmuls reach with no generation loop around them: one forward of a
    # full batch of prompts (prefill only), same FLOP count.
    ids = [policy.encode(c) for c in conversations]
    width = min(len(i) for i in ids)
    batch = torch.tensor([i[:width] for i in ids])
    with torch.inference_mode():
        model(input_ids=batch, logits_to_keep=1)  # as generate's prefill: logits of the last token only
        started = time.perf_counter()
        model(input_ids=batch, logits_to_keep=1)
        fwd_s = time.perf_counter() - started
    fwd_flops = 2 * non_embed * batch.numel() + attn_coef * len(ids) * attended(1, width)

    print(f"## Generation FLOP/s: model.tiny {hidden}x{layers} layers ({non_embed / 1e6:.2f}M non-embedding "
          f"params, vocab {embed // hidden}), {len(conversations)} tidy conversations "
          f"(prompt {min(len(i) for i in ids)}-{max(len(i) for i in ids)} tokens), max_new_tokens "
          f"{recipe.explore.max_new_tokens}, greedy, prefix cache {'off' if args.no_prefix_cache else 'on'}, "
          f"{torch.get_num_threads()} torch thread(s)\n")
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s (fp32, n={peak_n}, best of 5 per size)\n")
    print("| batch size | calls | prompt tokens | prefilled | generated | seconds | generated tok/s | GFLOP "
          "| GFLOP/s | of matmul peak |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for bs, s in rows:
        rate = s["flops"] / s["seconds"]
        calls = -(-len(conversations) // bs)
        print(f"| {bs} | {calls} | {s['prompt']:.0f} | {s['prefilled']:.0f} | {s['generated']:.0f} | "
              f"{s['seconds']:.2f} | {s['generated'] / s['seconds']:.0f} | {s['flops'] / 1e9:.1f} | "
              f"{rate / 1e9:.2f} | {rate / peak:.1%} |")
    fwd_rate = fwd_flops / fwd_s
    print(f"| forward only, {batch.shape[0]} x {width} | 1 | {batch.numel()} | {batch.numel()} | 0 | {fwd_s:.2f} | - | "
          f"{fwd_flops / 1e9:.1f} | {fwd_rate / 1e9:.2f} | {fwd_rate / peak:.1%} |")


if __name__ == "__main__":
    main()
