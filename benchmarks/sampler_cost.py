"""The cost of drawing one token per row from SmolLM2-sized logits: our per-row sampler
(eto_core.sampling.RowSampler, two-level inverse CDF), the Gumbel-max draw it replaced (a
uniform per vocabulary entry), and HF's softmax + ``torch.multinomial`` (one shared stream).

Medians of interleaved repeats, so a noisy machine hits every method alike:

    .venv/bin/python benchmarks/sampler_cost.py --threads 1 --batches 16 40
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from eto_core.sampling import RowSampler, warp


def gumbel_pick(logits: torch.Tensor, generators: list[torch.Generator], temperature: float) -> torch.Tensor:
    """Gumbel-max with a uniform per row and vocabulary entry (the sampler's first version)."""
    uniform = torch.stack([torch.rand(logits.shape[-1], generator=g) for g in generators])
    return (warp(logits, temperature, 1.0) - torch.log(-torch.log(uniform))).argmax(-1)


def medians(rows: int, vocab: int, temperature: float, repeats: int) -> dict[str, float]:
    """Milliseconds per draw of each method, median of ``repeats`` interleaved rounds."""
    logits = torch.randn((rows, vocab), generator=torch.Generator().manual_seed(0)) * 3
    sampler = RowSampler(0, 1, rows, temperature, 1.0)
    generators = [torch.Generator().manual_seed(i) for i in range(rows)]
    methods: dict[str, Callable[[], object]] = {
        "ours": lambda: sampler.pick(logits, range(rows)),
        "gumbel": lambda: gumbel_pick(logits, generators, temperature),
        "multinomial": lambda: torch.multinomial((logits / temperature).softmax(-1), 1),
    }
    for draw in methods.values():
        draw()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, draw in methods.items():
            start = time.perf_counter()
            draw()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 40])
    parser.add_argument("--vocab", type=int, default=49152, help="SmolLM2's vocabulary")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"ms per decoding step (median of {args.repeats}), vocabulary {args.vocab}, "
          f"temperature {args.temperature}, torch threads {torch.get_num_threads()}\n")
    print("| rows | per-row sampler (ours) | Gumbel-max, a uniform per entry | HF softmax + multinomial |")
    print("|---:|---:|---:|---:|")
    for rows in args.batches:
        median = medians(rows, args.vocab, args.temperature, args.repeats)
        print(f"| {rows} | {median['ours']:.1f} | {median['gumbel']:.1f} | {median['multinomial']:.1f} |")

if __name__ == "__main__":
    main()
