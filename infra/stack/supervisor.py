"""Starting, watching and stopping one service's processes.

A service is started in its own session and process group, its pid and start time recorded in
``<state>/run/<service>.json``; the pid is trusted only while the process with it started at that
time, so a reused pid is never taken for the service. Stopping reaches the whole group and any
descendant that left it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from infra.stack.config import HOST, StackConfig, StackError, atomic_write


@dataclass(frozen=True)
class Service:
    """One service: the command that runs it, its environment, ports and health check."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]  # every port it listens on, by label: all must be free before it starts
    health_url: str
    port_flag: str  # the `eto stack up` option that moves its main port


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a socket in TIME_WAIT after our own `down` is not "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def start(config: StackConfig, spec: Service) -> int:
    taken = [(label, port) for label, port in spec.ports.items() if port_in_use(port)]
    if taken:
        listing = ", ".join(f"{port} ({label})" for label, port in taken)
        raise StackError(
            f"{spec.name}: port {listing} on {HOST} is already in use by another process; stop it (a leftover "
            f"of this stack goes with `eto stack down`) or choose another port with `eto stack up {spec.port_flag} N`."
        )
    log_path = config.path("logs", f"{spec.name}.log")
    with log_path.open("ab") as log_file:
        log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(spec.argv)}\n".encode())
        log_file.flush()
        # Own session and process group, so `down` reaches every process the service spawns.
        proc = subprocess.Popen(spec.argv, env=spec.env, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, cwd=config.state_dir, start_new_session=True)
    record = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "argv": spec.argv}
    atomic_write(config.path("run", f"{spec.name}.json"), json.dumps(record))
    return proc.pid


def wait_healthy(config: StackConfig, spec: Service, pid: int) -> None:
    log_path = config.path("logs", f"{spec.name}.log")
    deadline = time.monotonic() + config.start_timeout
    while time.monotonic() < deadline:
        if healthy(spec.health_url):
            return
        record = read_pid(config, spec.name)
        if record is None or leader(record) is None:
            _reap(pid)
            raise StackError(f"{spec.name}: exited during start-up; see its log {log_path}:\n{_tail(log_path)}")
        time.sleep(0.5)
    raise StackError(
        f"{spec.name}: no healthy answer from {spec.health_url} within {config.start_timeout:.0f} s; it is left "
        f"running (pid {pid}): see its log {log_path}, then `eto stack down`."
    )


def healthy(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def read_pid(config: StackConfig, name: str) -> dict[str, Any] | None:
    path = config.path("run", f"{name}.json")
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text()))


def leader(record: Mapping[str, Any]) -> psutil.Process | None:
    """The recorded process if it is still the same process (pid not reused) and not a zombie."""
    try:
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["create_time"])) > 1.0:
            return None
        return proc if alive(proc) else None
    except psutil.Error:
        return None


def processes(record: Mapping[str, Any]) -> list[psutil.Process]:
    """Every live process of a service: its process group plus the leader's descendants (a child
    that started its own session leaves the group but not the tree)."""
    pgid = int(record["pid"])
    found: dict[int, psutil.Process] = {}
    lead = leader(record)
    if lead is not None:
        found[lead.pid] = lead
        with contextlib.suppress(psutil.Error):
            found.update({c.pid: c for c in lead.children(recursive=True)})
    started = float(record["create_time"])
    for proc in psutil.process_iter():
        try:
            # A group member younger than the service's leader: a reused pid is never mistaken
            # for one of ours.
            if os.getpgid(proc.pid) == pgid and proc.create_time() >= started - 1.0:
                found[proc.pid] = proc
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return [p for p in found.values() if alive(p)]


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def terminate(procs: list[psutil.Process], grace: float) -> None:
    pgids = set()
    for proc in procs:
        try:
            pgids.add(os.getpgid(proc.pid))
        except ProcessLookupError:
            continue
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pgid in pgids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for proc in procs:
                _reap(proc.pid)
            if not any(alive(p) for p in procs):
                return
            time.sleep(0.2)


def _reap(pid: int) -> None:
    """Collect the exit status of our own child (when `up` ran in this process), so it does not
    linger as a zombie; a no-op for other processes."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _tail(path: Path, lines: int = 15) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
