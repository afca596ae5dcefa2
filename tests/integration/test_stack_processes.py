"""Stopping a service reaches every process it spawned, even one that left its process group."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from infra import stack as S
from infra.stack import supervisor

pytestmark = pytest.mark.integration

# A "service" whose child starts its own session (as some servers' workers do) and sleeps.
SPAWNER = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
    "time.sleep(300)\n"
)


def _service(port: int) -> S.Service:
    return S.Service(name="s3", argv=[sys.executable, "-c", SPAWNER], env={}, ports={"s3": port},
                     health_url=f"http://127.0.0.1:{port}/", port_flag="--s3-port")


def test_down_stops_the_group_and_escaped_children(tmp_path: Path) -> None:
    config = S.StackConfig(state_dir=tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "logs").mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pid = supervisor.start(config, _service(port))
    record = supervisor.read_pid(config, "s3")
    assert record is not None
    deadline = time.monotonic() + 30
    while len(supervisor.processes(record)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    procs = supervisor.processes(record)
    assert len(procs) == 3 and pid in {p.pid for p in procs}
    S.down(config, log=lambda _: None, grace=5)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)
    assert S.service_status(config, "s3").state == "stopped"
    S.down(config, log=lambda _: None)  # idempotent


def test_a_port_in_use_fails_before_anything_starts(tmp_path: Path) -> None:
    config = S.StackConfig(state_dir=tmp_path)
    (tmp_path / "run").mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(S.StackError, match=rf"s3: port {port} \(s3\) on 127.0.0.1 is already in use.*--s3-port"):
            supervisor.start(config, _service(port))
    assert not list((tmp_path / "run").iterdir())
