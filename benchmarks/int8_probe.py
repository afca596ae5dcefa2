"""Would int8 linear layers speed up SmolLM2 rollouts without changing the agent? A probe.

Decoding at batch 16 spends about half its time in the linear layers, reading every fp32 weight
once per token. PyTorch's dynamic int8 quantization (fbgemm, avx512-VNNI on this CPU) reads a
quarter of the bytes. This script measures both sides on the real model, side by side in one
process:

- speed: all the model's linear layers at decode-shaped batches, fp32 vs int8 (per-channel
  weights, activations quantized per call), and ``torch._weight_int8pack_mm`` (int8 weights,
  fp32 activations) for one layer shape;
- fidelity: the next-token argmax agreement and the KL divergence from fp32 on the one-shot
  prompt plus expert turns of tidy trajectories, teacher-forced, in two ways: a whole-sequence
  forward (one activation scale per call for hundreds of tokens) and token-by-token decoding
  from an fp32-encoded prefix (one scale per token, as a batch-1 rollout would see).

    .venv/bin/python benchmarks/int8_probe.py --trajectories 4 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from collections.abc import Callable

import torch
from _experts import tidy_experts

from eto_core.modeling import load_model
from eto_core.tokenization import encode_conversation


def _ms(fn: Callable[[], object], repeats: int = 10) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def _compare(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    agree = float((out.argmax(-1) == ref.argmax(-1)).float().mean())
    lp, lq = ref.log_softmax(-1), out.log_softmax(-1)
    return agree, float((lp.exp() * (lp - lq)).sum(-1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default="/tmp/smollm2-model", help="converted SmolLM2 folder")
    parser.add_argument("--trajectories", type=int, default=4)
    parser.add_argument("--decode-tokens", type=int, default=96, help="tokens decoded one by one per trajectory")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # torch.ao.quantization's deprecation notices
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    from transformers import DynamicCache

    model, tokenizer = load_model(args.model_dir)
    model.eval()
    qmodel = quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear: per_channel_dynamic_qconfig},
                              dtype=torch.qint8)
    fp_lin = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    q_lin = [m for m in qmodel.modules() if type(m).__name__ == "Linear" and m not in fp_lin]
    print(f"SmolLM2-135M-Instruct, {len(fp_lin)} linear layers, torch threads {torch.get_num_threads()}\n")
    print("| batch | fp32 linears ms | int8 dynamic linears ms | speed-up | fp32 576x1536 x30 ms | int8-weight mm x30 ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    with torch.inference_mode():
        w = torch.randn(1536, 576)
        scales = w.abs().amax(1) / 127
        wq = (w / scales[:, None]).round().to(torch.int8)
        for batch in (1, 16, 32):
            xs = {m.in_features: torch.randn(batch, m.in_features) for m in fp_lin}
            fp = _ms(lambda xs=xs: [m(xs[m.in_features]) for m in fp_lin])
            q = _ms(lambda xs=xs: [m(xs[m.in_features]) for m in q_lin])
            x = torch.randn(batch, 576)
            one = _ms(lambda x=x: [torch.nn.functional.linear(x, w) for _ in range(30)])
            packed = _ms(lambda x=x: [torch._weight_int8pack_mm(x, wq, scales) for _ in range(30)], repeats=2)
            print(f"| {batch} | {fp:.1f} | {q:.1f} | {fp / q:.1f}x | {one:.1f} | {packed:.1f} |")

        trajs = tidy_experts(args.trajectories, True)
        whole, decode = [], []
        for t in trajs:
            enc = encode_conversation(tokenizer, t.messages, t.num_prompt_messages, 4096)
            ids = torch.tensor([enc.input_ids])
            whole.append(_compare(model(ids).logits[0], qmodel(ids).logits[0]))
            start = ids.shape[1] - args.decode_tokens
            logits = {}
            for name, m in (("fp32", model), ("int8", qmodel)):
                cache = DynamicCache(config=model.config)
                model(ids[:, :start], past_key_values=cache, use_cache=True)  # the same fp32 prefix for both
                logits[name] = torch.cat([m(ids[:, i : i + 1], past_key_values=cache, use_cache=True).logits[0]
                                          for i in range(start, ids.shape[1])])
            decode.append(_compare(logits["fp32"], logits["int8"]))
    mean = lambda rows, i: sum(r[i] for r in rows) / len(rows)  # noqa: E731
    print(f"\nFidelity of int8 vs fp32 on {len(trajs)} tidy expert conversations (one-shot prompt):\n")
    print("| how | next-token argmax agreement | KL(fp32 || int8) per token |")
    print("|---|---:|---:|")
    print(f"| whole-sequence forward | {mean(whole, 0):.1%} | {mean(whole, 1):.3f} |")
    print(f"| token by token, last {args.decode_tokens} tokens | {mean(decode, 0):.1%} | {mean(decode, 1):.3f} |")


if __name__ == "__main__":
    main()
