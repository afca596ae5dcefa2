"""Shared set-up of the benchmarks that build the recipe's tiny model without the pipeline."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from environments.base import TextEnv
from environments.registry import make_env
from eto_core.config import Recipe
from eto_core.experts import collect_expert
from eto_core.stages import corpus_tokenizer


def experts_and_tokenizer(recipe: Recipe, n: int) -> tuple[Callable[[], TextEnv], list[Any], Any]:
    """The env factory, the first ``n`` training tasks' expert trajectories, and the tokenizer
    the model_init stage would train (on the first ``model.tokenizer_corpus_tasks`` experts)."""
    make = partial(make_env, recipe.env.name, **recipe.env.kwargs)
    env = make()
    tasks = env.tasks("train")[: max(n, recipe.model.tokenizer_corpus_tasks)]
    env.close()
    experts, _ = collect_expert(make, tasks, env_name=recipe.env.name, split="train",
                                one_shot=recipe.env.one_shot, progress=False)
    return make, experts[:n], corpus_tokenizer(recipe, experts)


def tidy_experts(n: int, one_shot: bool = True) -> list[Any]:
    """The first ``n`` tidy training tasks' expert trajectories (15-step cap), for the benchmarks
    that train the real model outside the pipeline."""
    make = partial(make_env, "tidy", max_steps=15)
    env = make()
    tasks = env.tasks("train")[:n]
    env.close()
    experts, _ = collect_expert(make, tasks, env_name="tidy", split="train", one_shot=one_shot, progress=False)
    return experts


def result_in_fresh_process(script: str, mode: str, argv: list[str]) -> dict[str, Any]:
    """Run ``script --one MODE ARGV`` in a new interpreter (so its peak memory is its own) and
    parse the JSON it prints after "RESULT "."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, script, "--one", mode, *argv], capture_output=True, text=True,
                         check=True).stdout
    return dict(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))


@contextlib.contextmanager
def op_profile(rows: int, title: str = "") -> Iterator[None]:
    """With ``rows`` > 0: profile the block (torch.profiler, CPU) and print its ``rows`` costliest
    ops by self time (each op without its callees): where the block's time goes. 0: nothing."""
    if not rows:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        yield
    print(title + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows), flush=True)


def converted_model(model: str, model_dir: str) -> str:
    """``model_dir``, holding ``model`` (a GGUF spec such as the package's SmolLM2) converted to
    a Hugging Face folder; converted on the first call, reused after."""
    from pathlib import Path

    if not Path(model_dir, "config.json").is_file():
        from eto_core.model_source import convert_gguf, resolve_model_path

        convert_gguf(resolve_model_path(model), model_dir)
    return model_dir


def modes_in_fresh_processes(script: str, modes: list[str], argv: list[str]) -> list[dict[str, Any]]:
    """``result_in_fresh_process`` for each mode in turn, each row printed as JSON as it comes."""
    import json

    rows = []
    for mode in modes:
        rows.append(result_in_fresh_process(script, mode, argv))
        print(json.dumps(rows[-1]), flush=True)
    return rows
