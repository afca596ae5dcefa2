"""Long-running commands stopped by SIGTERM, SIGINT or SIGKILL leave no process behind.

Each command runs in a real subprocess; the signal goes to the command's own pid only (as a CI
timeout, a scheduler or `kill` send it), not to its process group, so anything that outlives it
is an orphan the test sees. Before the signal the test records the command's whole process tree
(the `infra.lifecycle` watchdog, Prefect's temporary server, Dask workers); after it, every one
of those processes must be gone within ``GONE_WITHIN`` seconds.

`eto run` goes through all three signals on one artifact root, each stop later in the pipeline,
so each run after the first shows the resume: every stage finished before is reused untouched.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.reliability.cli_runs import ROOT, bar_at, check_complete, manifests, stages_done, subprocess_env
from tests.reliability.conftest import ROWS

pytestmark = pytest.mark.slow

GONE_WITHIN = 10.0  # seconds for the whole tree to be gone after the command ended
START_TIMEOUT = 420.0  # a run reaching its stop point on 2 busy cores
STOP_TIMEOUT = 120.0  # for the command to exit after the signal


@dataclass
class Stopped:
    returncode: int
    output: str
    tree: dict[int, str]  # pid -> command line of every process of the tree at the signal
    sids: dict[int, int]  # pid -> session id
    pid: int
    seconds: float  # from the signal until the command ended


def _alive(pid: int, created: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - created) < 0.5 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _tree(pid: int) -> dict[int, tuple[float, str, int]]:
    """pid -> (create time, command line, session id) of ``pid`` and its descendants."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    out = {}
    for p in procs:
        try:
            out[p.pid] = (p.create_time(), " ".join(p.cmdline()), os.getsid(p.pid))
        except (psutil.Error, ProcessLookupError):
            continue
    return out


@contextmanager
def _started(argv: list[str], env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[bytes], list[bytes]]]:
    """``eto ARGV`` in its own session with its output collected; the group is SIGKILLed at the end
    whatever happened, so a failing test leaves nothing behind either."""
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *argv], cwd=ROOT, env=env or subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(proc.stdout.fileno(), 65536), b"")),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    try:
        yield proc, chunks
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=10)


def stop(argv: list[str], sig: int, when: Callable[[str], bool], *, env: dict[str, str] | None = None,
         group: bool = False) -> Stopped:
    """Run ``eto ARGV``; once ``when(output)`` holds, send ``sig`` to its pid (``group``: to its
    process group, as a terminal's Ctrl-C does); wait for it and for every process of its tree
    (recorded at the signal) to be gone."""
    with _started(argv, env) as (proc, chunks):
        deadline = time.monotonic() + START_TIMEOUT
        while not when(b"".join(chunks).decode(errors="replace")):
            assert proc.poll() is None, f"ended before the stop point:\n{b''.join(chunks).decode()[-4000:]}"
            assert time.monotonic() < deadline, f"no stop point in {START_TIMEOUT} s:\n{b''.join(chunks).decode()[-4000:]}"
            time.sleep(0.05)
        tree = _tree(proc.pid)
        signalled = time.monotonic()
        if group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        try:
            returncode = proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGUSR1)  # the CLI prints every thread's stack: where it waits
            time.sleep(3)
            raise AssertionError(f"{signal.Signals(sig).name}: still running {STOP_TIMEOUT} s after the signal; "
                                 f"its output and threads:\n{b''.join(chunks).decode(errors='replace')[-12000:]}") from None
        seconds = time.monotonic() - signalled
        ended = time.monotonic()
        left = dict(tree)
        while left and time.monotonic() - ended < GONE_WITHIN:
            left = {pid: v for pid, v in left.items() if _alive(pid, v[0])}
            time.sleep(0.1)
        time.sleep(0.2)  # the last output lines
        output = b"".join(chunks).decode(errors="replace")
        assert not left, (f"{signal.Signals(sig).name}: processes left {GONE_WITHIN} s after the command ended: "
                          f"{[v[1][:120] for v in left.values()]}\n{output[-3000:]}")
    return Stopped(returncode, output, {pid: v[1] for pid, v in tree.items()}, {pid: v[2] for pid, v in tree.items()},
                   proc.pid, seconds)


def _has(tree: dict[int, str], *words: str) -> bool:
    return any(all(w in cmd for w in words) for cmd in tree.values())


def _flow_run_states(state_dir: Path) -> list[str]:
    with sqlite3.connect(state_dir / "prefect" / "prefect.db") as db:
        return [row[0] for row in db.execute("SELECT state_type FROM flow_run ORDER BY created")]


def _mlflow_runs(db_path: Path) -> dict[str, str]:
    """run name -> status of every parent (not nested) run, oldest first."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT name, status FROM runs WHERE run_uuid NOT IN "
                          "(SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId') ORDER BY start_time")
        return {f"{i}:{name}": status for i, (name, status) in enumerate(rows)}


def _running_runs(db_path: Path) -> int:
    """MLflow runs, nested ones included, still RUNNING."""
    with sqlite3.connect(db_path) as db:
        return int(db.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0])


def _run_argv(work: Path) -> list[str]:
    # Stages long enough to be stopped in the middle; rollouts in shards; a local Dask cluster
    # (started at the first rollout) so its worker processes are part of the tree.
    sets = ["sft.num_train_epochs=4", "explore.shard_size=4", "evaluate.shard_size=2",
            "runner.kind=dask", "runner.workers=1"]
    return ["run", "--config", "recipes/mini.yaml", "--artifact-root", str(work / "artifacts"),
            "--mlflow-uri", f"sqlite:///{work / 'mlflow.db'}", "--state-dir", str(work / "state"),
            *[a for s in sets for a in ("--set", s)]]


def test_eto_run_stopped_by_sigterm_sigint_and_sigkill_leaves_no_process_and_resumes(tmp_path: Path) -> None:
    argv, root = _run_argv(tmp_path), tmp_path / "artifacts"

    # SIGTERM during SFT: Prefect's temporary server is the child to stop.
    term = stop(argv, signal.SIGTERM, lambda out: bar_at(out, "SFT", 1))
    assert term.returncode == 128 + signal.SIGTERM, term.output[-3000:]
    assert _has(term.tree, "uvicorn", "prefect.server") and _has(term.tree, "infra.lifecycle")
    # In the command's session, the server died of the group's signals before the flow run was marked.
    assert all(sid != term.sids[term.pid] for pid, sid in term.sids.items()
               if "uvicorn" in term.tree[pid]), "Prefect's temporary server is in the command's session"
    assert "stopped by SIGTERM" in term.output
    assert _flow_run_states(tmp_path / "state") == ["CRASHED"]
    assert list(_mlflow_runs(tmp_path / "mlflow.db").values()) == ["KILLED"]
    assert _running_runs(tmp_path / "mlflow.db") == 0
    check_complete(root)
    assert stages_done(root).get("sft", 0) == 0, "the stop came after SFT"
    after_term = manifests(root)
    assert {"expert", "model_init"} <= {n.split("/")[0] for n in after_term}

    # SIGINT to the process group, as a terminal's Ctrl-C, during the SFT policy's evaluation:
    # Dask's worker process gets it too, Prefect's temporary server (in a session of its own) not.
    interrupted = stop(argv, signal.SIGINT, lambda out: stages_done(root).get("evaluate_shard", 0) >= 1, group=True)
    assert interrupted.returncode == 128 + signal.SIGINT, interrupted.output[-3000:]
    assert _has(interrupted.tree, "multiprocessing"), f"no Dask worker in {interrupted.tree}"
    assert _flow_run_states(tmp_path / "state")[-1] == "CRASHED"
    assert list(_mlflow_runs(tmp_path / "mlflow.db").values())[-1] == "KILLED"
    assert _running_runs(tmp_path / "mlflow.db") == 0
    check_complete(root)
    after_int = manifests(root)
    assert all(after_int[n] == after_term[n] for n in after_term), "a stage finished before was redone"
    assert stages_done(root).get("sft", 0) == 1 and stages_done(root).get("evaluate", 0) < 2

    # SIGKILL of the command alone during exploration: nothing in it runs, the watchdog stops the rest.
    killed = stop(argv, signal.SIGKILL, lambda out: stages_done(root).get("explore_shard", 0) >= 1)
    assert killed.returncode == -signal.SIGKILL
    assert _has(killed.tree, "uvicorn", "prefect.server") and _has(killed.tree, "multiprocessing")
    check_complete(root)
    after_kill = manifests(root)
    assert all(after_kill[n] == after_int[n] for n in after_int), "a stage finished before was redone"
    assert stages_done(root).get("explore", 0) == 0

    for sig, run in (("SIGTERM", term), ("SIGINT", interrupted), ("SIGKILL", killed)):
        where = {"SIGTERM": "SFT", "SIGINT": "the SFT policy's evaluation", "SIGKILL": "exploration"}[sig]
        to = "its process group, as Ctrl-C" if sig == "SIGINT" else "its pid only"
        kinds = [name for name, word in (("the watchdog", "infra.lifecycle"), ("Prefect's temporary server", "uvicorn"),
                                         ("a Dask worker", "multiprocessing")) if _has(run.tree, word)]
        ROWS.append({
            "area": "stop signals", "test": f"{sig} during {where}",
            "fault": f"{sig} to `eto run` ({to}) during {where}",
            "error": (f"exit code {run.returncode} after {run.seconds:.1f} s; all {len(run.tree)} processes of its tree "
                      f"(the command, {', '.join(kinds)}) gone within {GONE_WITHIN:.0f} s"
                      + ("; flow run Crashed, MLflow run KILLED; the next run reused every finished stage"
                         if sig != "SIGKILL" else "")),
            "lost": "the work in flight in that stage; no partial artifact"})


def _mlflow_run_started(db_path: Path) -> bool:
    try:
        return bool(_mlflow_runs(db_path))
    except sqlite3.Error:  # not created yet, or being migrated
        return False


def _mini_model(work: Path) -> Path:
    """The mini recipe's initial model folder (seconds: a tiny random model)."""
    from eto_core import stages
    from eto_core.config import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "mini.yaml", [f"storage.root={work / 'model-artifacts'}"])
    store = stages.make_store(recipe, work / "model-state")
    return Path(stages.model_folder(store, stages.model_init_stage(recipe, store, stages.expert_stage(recipe, store, progress=False).ref).ref))


@pytest.mark.parametrize("command", ["baseline", "evaluate"])
def test_eto_baseline_and_evaluate_stopped_mid_flow_leave_no_process(command: str, tmp_path: Path) -> None:
    """Lighter than `eto run`'s: one signal each, once the flow run has its MLflow run."""
    sig = signal.SIGTERM if command == "baseline" else signal.SIGINT
    what = ["baseline", "rft"] if command == "baseline" else ["evaluate", "--model", str(_mini_model(tmp_path))]
    argv = [*what, "--config", "recipes/mini.yaml", "--artifact-root", str(tmp_path / "artifacts"),
            "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--state-dir", str(tmp_path / "state")]
    # SIGINT as a terminal's Ctrl-C sends it, to the whole process group.
    done = stop(argv, sig, lambda out: _mlflow_run_started(tmp_path / "mlflow.db"), group=sig == signal.SIGINT)
    assert done.returncode == 128 + sig, done.output[-3000:]
    assert _has(done.tree, "uvicorn", "prefect.server")
    assert _flow_run_states(tmp_path / "state") in (["CRASHED"], ["CANCELLED"])
    assert list(_mlflow_runs(tmp_path / "mlflow.db").values()) == ["KILLED"]
    assert _running_runs(tmp_path / "mlflow.db") == 0
    if (tmp_path / "artifacts").is_dir():  # a stop this early may come before the first artifact
        check_complete(tmp_path / "artifacts")


def test_eto_serve_stops_on_sigterm_and_its_watchdog_on_sigkill(tmp_path: Path) -> None:
    model = _mini_model(tmp_path)
    with socket_port() as port:
        argv = ["serve", "--model", str(model), "--port", str(port)]

    def serving(_: str) -> bool:
        return _serves(port)

    for sig in (signal.SIGTERM, signal.SIGINT):
        done = stop(argv, sig, serving)
        assert done.returncode == 128 + sig, done.output[-3000:]
        assert _has(done.tree, "infra.lifecycle")
    killed = stop(argv, signal.SIGKILL, serving)
    assert killed.returncode == -signal.SIGKILL


def test_sigusr1_prints_every_threads_stack_and_the_command_goes_on(tmp_path: Path) -> None:
    """The diagnostic a stop test prints when a command does not exit: SIGUSR1 dumps the threads."""
    model = _mini_model(tmp_path)
    with socket_port() as port:
        argv = ["serve", "--model", str(model), "--port", str(port)]

    with _started(argv) as (proc, chunks):
        deadline = time.monotonic() + START_TIMEOUT
        while not _serves(port):
            assert proc.poll() is None and time.monotonic() < deadline, b"".join(chunks).decode()[-3000:]
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 30

        def dumped() -> bool:  # every thread, the signalled (main) one last
            output = b"".join(chunks).decode(errors="replace")
            return "Current thread" in output and output.count("(most recent call first)") >= 2

        while not dumped():
            assert time.monotonic() < deadline, b"".join(chunks).decode()[-3000:]
            time.sleep(0.1)
        assert _serves(port) and proc.poll() is None


def _serves(port: int) -> bool:
    """Whether `eto serve` on ``port`` answers its model list."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def socket_port() -> Iterator[int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield port


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_eto_stack_up_stopped_while_starting_leaves_no_service(sig: int, tmp_path: Path) -> None:
    """Stopped while it waits for MLflow (S3 already healthy), `eto stack up` stops the services it
    started: on SIGTERM itself, on SIGKILL through its watchdog. Done, it leaves them running
    (the stack tests in tests/integration start the stack through the CLI)."""
    from infra import stack as S
    from tests.integration.conftest import clean_env, free_port, free_weed_base

    state = tmp_path / "stack"
    argv = ["stack", "up", "--state-dir", str(state), "--s3-port", str(free_port()), "--mlflow-port",
            str(free_port()), "--prefect-port", str(free_port()), "--weed-port-base", str(free_weed_base())]
    done = stop(argv, sig, lambda out: (state / "run" / "mlflow.json").is_file(), env=clean_env())
    assert done.returncode == (128 + sig if sig != signal.SIGKILL else -sig), done.output[-3000:]
    assert _has(done.tree, "weed", "mini") and _has(done.tree, "mlflow", "server")
    config = S.load_config(state)
    assert config is not None
    if sig == signal.SIGTERM:
        assert [st.state for st in S.status(config)] == ["stopped"] * 3
    else:  # no chance to clean up: pid files of dead processes, which `up` and `down` handle
        assert {st.state for st in S.status(config)} <= {"stopped", "dead"}
