"""Rollout shards as Prefect tasks on the configured runner: a local Dask cluster gives the same
results as the default thread pool, with the shards run in the cluster's worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eto_core.config import RunnerSettings, load_recipe
from tasks.runners import RunnerUnavailable, make_task_runner

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]



def _shard_workers(artifacts: Path) -> list[dict[str, object]]:
    out = []
    for manifest in sorted(artifacts.glob("*_shard/*/manifest.json")):
        out.append(json.loads(manifest.read_text())["meta"]["info"]["worker"])
    return out


def test_mini_recipe_on_a_local_dask_cluster_matches_the_thread_pool(tmp_path: Path, prefect_harness: None) -> None:
    pytest.importorskip("prefect_dask")
    from flows.pipeline import eto_pipeline

    def run(name: str, runner: list[str]) -> dict[str, object]:
        recipe = load_recipe(ROOT / "recipes" / "mini.yaml", [
            f"storage.root={tmp_path / name / 'artifacts'}", f"tracking.mlflow_uri=sqlite:///{tmp_path / name / 'mlflow.db'}",
            "explore.shard_size=4", "evaluate.shard_size=2", *runner])
        return eto_pipeline(recipe, state_dir=str(tmp_path / name / "state"))

    threads = run("threads", [])
    dask = run("dask", ["runner.kind=dask", "runner.workers=2", "runner.torch_threads=1"])
    # Same scores; the evaluation artifacts' URIs differ, being under another root.
    assert [{**s, "artifact": None} for s in dask["summaries"]] == [{**s, "artifact": None} for s in threads["summaries"]]  # type: ignore[attr-defined]
    assert dask["final_model"]["digest"] == threads["final_model"]["digest"]  # type: ignore[index]

    # 3 exploration shards + 2 x 3 rollouts of 2 evaluation shards
    here = {(w["host"], w["pid"]) for w in _shard_workers(tmp_path / "threads" / "artifacts")}
    assert len(_shard_workers(tmp_path / "threads" / "artifacts")) == 3 + 8
    assert {pid for _, pid in here} == {os.getpid()}
    workers = _shard_workers(tmp_path / "dask" / "artifacts")
    assert len(workers) == 3 + 8
    pids = {w["pid"] for w in workers}
    assert os.getpid() not in pids and len(pids) == 2  # both worker processes took shards


def test_training_after_one_thread_shards_runs_at_the_process_thread_count(tmp_path: Path) -> None:
    """`eto run` resumed after SFT (cached), as a stream resumes: the exploration's two shards run
    at one thread each on the thread pool, and the DPO after them is the main thread's first torch
    work, so its thread count is whatever torch's process-wide setting says then. Before
    eto_core/threads.py that was the shards' 1: half the cores for DPO."""
    common = ["--config", "recipes/mini.yaml", "--state-dir", str(tmp_path / "state"),
              "--artifact-root", str(tmp_path / "artifacts"), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
              "--set", "explore.shard_size=4", "--set", "runner.workers=2", "--set", "runner.torch_threads=1"]
    # The process's count, whatever the machine; a local Dask cluster (the test above) leaves
    # OMP/MKL/OPENBLAS_NUM_THREADS=1 in this process's environment, and torch reads MKL's last.
    env = {**{k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")},
           "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    for iterations in ("0", "1"):
        done = subprocess.run([sys.executable, "-m", "flows.cli", "run", *common, "--iterations", iterations],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "artifacts" / "explore_shard").glob("*/manifest.json"))) == 3
    (dpo,) = (tmp_path / "artifacts" / "dpo").glob("*/manifest.json")
    assert json.loads(dpo.read_text())["meta"]["metrics"]["dpo_torch_threads"] == 2.0


def test_a_runner_that_is_not_installed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_ray(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("prefect_ray"):
            raise ImportError("No module named 'prefect_ray'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(RunnerUnavailable, match=r"pip install 'eto\[ray\]'"):
        make_task_runner(RunnerSettings(kind="ray"))


def test_the_default_runner_is_a_thread_pool_of_the_configured_size() -> None:
    from prefect.task_runners import ThreadPoolTaskRunner

    runner = make_task_runner(RunnerSettings(workers=3))
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 3
