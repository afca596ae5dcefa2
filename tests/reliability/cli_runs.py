"""`eto run` in a real subprocess, watched from outside: its output as it streams and the
artifacts as they appear, with SIGKILL of its whole process group on a condition."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from eto_core.storage import MANIFEST, ArtifactStore
from tests.integration.conftest import clean_env

ROOT = Path(__file__).resolve().parents[2]
# The mini recipe with stages long enough (seconds) to be hit in the middle, and rollouts in
# shards so a mid-rollout crash has finished shards to resume from.
OVERRIDES = ["sft.num_train_epochs=8", "dpo.num_train_epochs=8", "explore.shard_size=4", "evaluate.shard_size=2"]
RUN_TIMEOUT = 600


@dataclass
class Run:
    returncode: int
    output: str
    killed: bool


def _cmd(work: Path) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "run", "--config", "recipes/mini.yaml",
            "--artifact-root", str(work / "artifacts"), "--mlflow-uri", f"sqlite:///{work / 'mlflow.db'}",
            "--state-dir", str(work / "state"), "--json", str(work / "result.json"),
            *[arg for o in OVERRIDES for arg in ("--set", o)]]


def subprocess_env() -> dict[str, str]:
    """This environment for `eto run` in a child: no other stack's settings, Prefect in --state-dir."""
    env = clean_env()
    for key in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH"):  # the CLI puts them in --state-dir
        env.pop(key, None)
    return env


def manifests(root: Path) -> dict[str, tuple[str, int]]:
    """'stage/key' -> (digest, manifest mtime) of every finished artifact under ``root``."""
    out = {}
    for path in root.glob(f"*/*/{MANIFEST}"):
        out[f"{path.parent.parent.name}/{path.parent.name}"] = (json.loads(path.read_text())["digest"],
                                                                path.stat().st_mtime_ns)
    return out


def check_complete(root: Path) -> None:
    """No partial artifact: every folder under a stage has a manifest whose hashes match."""
    store = ArtifactStore(str(root), cache_dir=root.parent / "verify-cache")
    for stage in root.iterdir():
        for folder in stage.iterdir():
            assert (folder / MANIFEST).is_file(), f"{folder}: an artifact folder without a manifest"
            store._verify(folder, json.loads((folder / MANIFEST).read_text()), folder.as_uri())


def stages_done(root: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in manifests(root):
        stage = name.split("/")[0]
        counts[stage] = counts.get(stage, 0) + 1
    return counts


def run(work: Path, kill_when: Callable[[str, Path], bool] | None, *, extra: Sequence[str] = (),
        env: dict[str, str] | None = None) -> Run:
    """Run the command (``extra`` options last, so they win); SIGKILL its process group as soon
    as ``kill_when(output, root)`` holds. A ``kill_when`` that never holds just watches."""
    proc = subprocess.Popen([*_cmd(work), *extra], cwd=ROOT, env=env or subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(proc.stdout.fileno(), 65536), b"")),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    killed = False
    deadline = time.monotonic() + RUN_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        if kill_when is not None and kill_when(b"".join(chunks).decode(errors="replace"), work / "artifacts"):
            try:
                group = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)] + [proc.pid]
            except psutil.NoSuchProcess:  # it ended on its own just now
                group = [proc.pid]
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            killed = True
            wait_gone(group)
            break
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"eto run did not finish within {RUN_TIMEOUT} s")
    reader.join(timeout=10)
    return Run(proc.returncode, b"".join(chunks).decode(errors="replace"), killed)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return
        time.sleep(0.1)
    pytest.fail(f"processes left after kill -9 of the group: {alive}")


def bar_at(output: str, name: str, at_least: int) -> bool:
    """The progress bar ``name`` shows at least ``at_least`` finished steps."""
    return any(int(m) >= at_least for m in re.findall(rf"{name}:\s+\d+%\|[^|\r\n]*\|\s*(\d+)/\d+", output))
