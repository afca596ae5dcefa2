"""`eto evaluate`: a model folder in-process and the same model behind `eto serve` (the openai
backend, a real server on 127.0.0.1) score identically, each as a tracked run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from eto_core import stages
from eto_core.config import load_recipe
from eto_core.records import read_records
from tests.infra.test_serving import _free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mini_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("evaluate-model")
    recipe = load_recipe(ROOT / "recipes" / "mini.yaml", [f"storage.root={work / 'artifacts'}"])
    store = stages.make_store(recipe, work / "state")
    expert = stages.expert_stage(recipe, store, progress=False)
    return Path(stages.model_folder(store, stages.model_init_stage(recipe, store, expert.ref).ref))


@pytest.fixture(scope="module")
def served(mini_model: Path) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--model", str(mini_model), "--port",
                             str(port), "--served-model-name", "mini"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "eto serve exited"
            try:
                if httpx.get(f"{base}/models").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "eto serve did not answer within 120 s"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _evaluate(tmp: Path, *extra: str) -> dict:
    out = tmp / f"result-{len(list(tmp.glob('result-*')))}.json"
    cmd = [sys.executable, "-m", "flows.cli", "evaluate", "--config", str(ROOT / "recipes" / "mini.yaml"),
           "--state-dir", str(tmp / "state"), "--artifact-root", str(tmp / "artifacts"),
           "--mlflow-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--json", str(out), *extra]
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_served_model_scores_like_the_folder_and_both_are_tracked(tmp_path: Path, mini_model: Path, served: str) -> None:
    local = _evaluate(tmp_path, "--model", str(mini_model))
    remote = _evaluate(tmp_path, "--base-url", served, "--served-model", "mini")
    strip = [{k: v for k, v in s.items() if k not in ("extra", "artifact")} for s in local["summaries"]]
    assert [{k: v for k, v in s.items() if k not in ("extra", "artifact")} for s in remote["summaries"]] == strip
    assert {s["split"] for s in strip} == {"seen", "unseen"} and all(s["stage"] == "baseline" for s in strip)
    assert remote["evaluated"] == f"mini @ {served}"

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for result in (local, remote):
        run = client.get_run(result["mlflow_run_id"])
        assert run.info.status == "FINISHED" and "seen_avg_reward" in run.data.metrics
    # The endpoint's trajectories name the endpoint, not a local model.
    uris = set()
    for f in (tmp_path / "artifacts" / "evaluate").glob("*/trajectories.parquet"):
        uris |= set(read_records(f, "trajectories")["model_uri"])
    assert f"openai:{served}#mini" in uris and len(uris) == 2


def test_run_refuses_the_openai_backend(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "flows.cli", "run", "--config", str(ROOT / "recipes" / "mini.yaml"),
           "--state-dir", str(tmp_path), "--artifact-root", str(tmp_path / "a"),
           "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}", "--set", "policy.backend=openai",
           "--set", "policy.base_url=http://127.0.0.1:9/v1", "--set", "policy.model=x"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "eto evaluate" in proc.stderr + proc.stdout
