"""LoRA vs full fine-tuning of the real model (SmolLM2-135M-Instruct): what each learns per minute.

Both train SFT for one pass over the same tidy expert trajectories (one-shot prompt, batch 1 x 8
accumulation, fp32, each at its usual learning rate), each in a fresh process, one after the
other in this run. Before and after, the agent-token negative log-likelihood per token is scored
on held-out expert trajectories (the training tasks after the trained ones). "Learned per
minute" is the drop in held-out NLL divided by the training minutes.

    .venv/bin/python benchmarks/sft_modes.py --train 24 --heldout 12
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _experts import converted_model, modes_in_fresh_processes, tidy_experts

MODES = {"full": 2e-5, "lora": 2e-4}


def heldout_nll(model, tokenizer, trajs) -> float:  # type: ignore[no-untyped-def]
    import torch

    from eto_core.logprobs import agent_token_logps
    from eto_core.tokenization import encode_conversation

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for t in trajs:
            enc = encode_conversation(tokenizer, t.messages, t.num_prompt_messages, 4096)
            ids = torch.tensor([enc.input_ids])
            logps, _ = agent_token_logps(model, ids, torch.ones_like(ids), torch.tensor([enc.agent_mask]))
            total -= float(logps.sum())
            count += logps.numel()
    return total / count


def run_one(mode: str, args: argparse.Namespace) -> dict:
    import torch

    from eto_core.lora import LoraSettings
    from eto_core.modeling import load_model
    from eto_core.sft import SFTSettings, train_sft
    from eto_core.training import peak_memory_mb

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model_dir)
    experts = tidy_experts(args.train + args.heldout, True)
    train, heldout = experts[: args.train], experts[args.train :]
    before = heldout_nll(model, tokenizer, heldout)
    settings = SFTSettings(num_train_epochs=1, learning_rate=MODES[mode], per_device_train_batch_size=1,
                           gradient_accumulation_steps=8, max_length=4096, logging_steps=1, warmup_ratio=0.05,
                           lora=LoraSettings(r=16, alpha=32) if mode == "lora" else None)
    result = train_sft(model, tokenizer, train, settings, f"/tmp/sft-modes-{mode}")
    after = heldout_nll(result.model, tokenizer, heldout)
    minutes = result.runtime_s / 60
    return {"mode": mode, "learning_rate": MODES[mode], "train_trajectories": len(train),
            "heldout_trajectories": len(heldout), "steps": result.num_steps, "train_min": round(minutes, 2),
            "heldout_nll_before": round(before, 4), "heldout_nll_after": round(after, 4),
            "nll_drop_per_min": round((before - after) / minutes, 4), "peak_rss_mb": round(peak_memory_mb())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default="/tmp/smollm2-model", help="converted model folder (made once)")
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--heldout", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--one", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args)), flush=True)
        return
    from eto_core.model_source import SMOLLM2_GGUF

    converted_model(SMOLLM2_GGUF, args.model_dir)
    start = time.perf_counter()
    rows = modes_in_fresh_processes(__file__, args.modes, sys.argv[1:])
    print(f"\n{time.perf_counter() - start:.0f} s in all\n")
    print("| mode | lr | train min | held-out NLL before -> after | NLL drop per min | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['learning_rate']} | {r['train_min']} | {r['heldout_nll_before']} -> "
              f"{r['heldout_nll_after']} | {r['nll_drop_per_min']} | {r['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
