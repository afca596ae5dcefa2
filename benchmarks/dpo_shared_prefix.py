"""DPO on the real model (SmolLM2-135M-Instruct): the shared prompt prefix once per batch vs not.

Trains one pass of LoRA DPO over the same real preference pairs (an ETO pairs artifact, e.g.
the SmolLM2 tidy run's) in two fresh processes, one after the other in this run:
- ``plain``: batch 1 x ``--accumulation`` (the recipes' layout before ``dpo.shared_prefix``);
- ``shared``: batch ``--accumulation`` x 1 with ``dpo.shared_prefix``: the prompt prefix the
  batch's pairs share runs once per batch instead of twice per pair.
Both take the same optimizer steps on the same loss. Prints training tokens/s (both sides of
every pair; the reference log-probs are precomputed before training and not counted), the
precompute's time, the loss of the first and last step, and the peak memory.

    .venv/bin/python benchmarks/dpo_shared_prefix.py --pairs /root/eto-smollm/artifacts/pairs/<key>/pairs.parquet \
        --num-pairs 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _experts import modes_in_fresh_processes

MODES = ("plain", "shared")


def run_one(mode: str, args: argparse.Namespace) -> dict:
    import torch

    from eto_core.dpo import DPOSettings, build_pair_rows, train_dpo
    from eto_core.lora import LoraSettings
    from eto_core.modeling import load_model
    from eto_core.records import frame_to_pairs, read_records
    from eto_core.training import peak_memory_mb

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model_dir)
    pairs = frame_to_pairs(read_records(args.pairs, "pairs"))[: args.num_pairs]
    rows, _ = build_pair_rows(tokenizer, pairs, 4096)
    tokens = sum(len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) for r in rows)
    shared = mode == "shared"
    settings = DPOSettings(beta=0.1, learning_rate=5e-5, num_train_epochs=1, warmup_ratio=0.0, logging_steps=1,
                           per_device_train_batch_size=args.accumulation if shared else 1,
                           gradient_accumulation_steps=1 if shared else args.accumulation, max_length=4096,
                           shared_prefix=shared, lora=LoraSettings(r=16, alpha=32))
    result = train_dpo(model, tokenizer, pairs, settings, f"/tmp/dpo-shared-{mode}")
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    return {"mode": mode, "pairs": len(rows), "tokens": tokens, "train_s": round(result.runtime_s, 1),
            "tokens_per_s": round(tokens / result.runtime_s, 1), "ref_precompute_s": round(result.ref_logps_seconds, 1),
            "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4), "peak_rss_mb": round(peak_memory_mb())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", required=True, help="a pairs.parquet artifact")
    parser.add_argument("--model-dir", default="/tmp/smollm2-model", help="converted SmolLM2 folder")
    parser.add_argument("--num-pairs", type=int, default=16)
    parser.add_argument("--accumulation", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args)), flush=True)
        return
    rows = modes_in_fresh_processes(str(Path(__file__).resolve()), args.modes, sys.argv[1:])
    base = rows[0]["tokens_per_s"]
    print("\n| mode | pairs | tokens | train s | tokens/s | vs first | reference precompute s | loss first -> last | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['pairs']} | {r['tokens']:,} | {r['train_s']} | {r['tokens_per_s']} | "
              f"{r['tokens_per_s'] / base:.2f}x | {r['ref_precompute_s']} | {r['first_loss']} -> {r['last_loss']} | "
              f"{r['peak_rss_mb']:,} |")


if __name__ == "__main__":
    main()
