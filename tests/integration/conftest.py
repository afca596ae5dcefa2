"""The real production stack for the integration tests: SeaweedFS, an MLflow server and a Prefect
server started by `eto stack up` in a temporary state directory on free loopback ports, and
stopped by `eto stack down` at the end of the session, which must leave no process behind."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra import stack as S
from infra.stack import supervisor

ROOT = Path(__file__).resolve().parents[2]
UP_TIMEOUT = 420  # three servers on two busy cores; the Prefect server alone takes 20-60 s


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: starts the real local stack (S3, MLflow, Prefect servers)")


@dataclass(frozen=True)
class Stack:
    config: S.StackConfig
    env: dict[str, str]  # for subprocesses: this environment plus the stack's settings

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir


def eto(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The `eto` command line in a fresh process, exactly as a user runs it."""
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def clean_env() -> dict[str, str]:
    """This environment without settings that could point a child at another stack."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "PREFECT_RESULTS", "AWS_",
                                                                       "MLFLOW_TRACKING", "ETO_"))}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((S.HOST, 0))
        return int(sock.getsockname()[1])


def free_weed_base() -> int:
    """A base whose 8 SeaweedFS ports and the admin's gRPC port (+10007) are all free."""
    for _ in range(200):
        base = random.randrange(20000, 50000)
        ports = S.StackPorts(weed_base=base).weed().values()
        if not any(S.port_in_use(p) for p in ports):
            return base
    raise RuntimeError("no free block of ports for SeaweedFS")


def stack_processes(config: S.StackConfig) -> list[int]:
    pids: list[int] = []
    for name in S.SERVICES:
        record = supervisor.read_pid(config, name)
        if record is not None:
            pids += [p.pid for p in supervisor.processes(record)]
    return pids


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("stack")
    env = clean_env()
    args = ["--state-dir", str(state), "--s3-port", str(free_port()), "--mlflow-port", str(free_port()),
            "--prefect-port", str(free_port()), "--weed-port-base", str(free_weed_base()), "--timeout", "300"]
    up = eto("stack", "up", *args, env=env, timeout=UP_TIMEOUT)
    config = S.load_config(state)
    if up.returncode != 0 or config is None:
        eto("stack", "down", "--state-dir", str(state), env=env)
        pytest.fail(f"eto stack up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
    creds = S.stored_credentials(config)
    assert creds is not None
    client_env = {**env, **S.client_env(config, creds), "PREFECT_HOME": str(state / "client-prefect")}
    try:
        yield Stack(config, client_env)
    finally:
        # `down` stops every process of every service, and a second `down` is a no-op.
        before = stack_processes(config)
        down = eto("stack", "down", "--state-dir", str(state), env=env, timeout=120)
        left = [p for p in before if _alive(p)]
        again = eto("stack", "down", "--state-dir", str(state), env=env, timeout=120)
        assert down.returncode == 0, down.stderr
        assert before and not left, f"processes left after `eto stack down`: {left}"
        assert again.returncode == 0, again.stderr


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
