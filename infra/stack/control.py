"""Up, down and status of the whole stack, and the credentials that go with it: the services in
their order (``SERVICES``), each started, waited for or stopped through ``infra.stack.supervisor``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from infra.stack import supervisor
from infra.stack.config import (
    SERVICES,
    Credentials,
    StackConfig,
    StackError,
    atomic_write,
    load_config,
    save_config,
    stored_credentials,
)
from infra.stack.services import ensure_bucket, services, write_weed_identity


@dataclass(frozen=True)
class ServiceStatus:
    """One service as ``status`` finds it."""

    name: str
    state: str  # running | starting | stopped | dead (pid file left by a process that is gone)
    pid: int | None
    url: str
    log: Path


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
        atomic_write(config.path("s3-credentials.json"), json.dumps(asdict(creds)), private=True)
    return creds


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
    write_weed_identity(config, creds)
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
                pid = supervisor.start(config, spec)
                log(f"{name}: started pid {pid}, waiting for {spec.health_url} (log: {status.log})")
            supervisor.wait_healthy(config, spec, pid)
            log(f"{name}: healthy at {status.url}")
        if name == "s3":
            ensure_bucket(config, creds)
    return [service_status(config, name) for name in SERVICES if name in names]


def down(
    config: StackConfig, log: Callable[[str], None] = print, grace: float = 20.0, names: Sequence[str] = SERVICES
) -> None:
    """Stop every service (of ``names``: process group and descendants), newest first; no process is left."""
    for name in (n for n in reversed(SERVICES) if n in names):
        record = supervisor.read_pid(config, name)
        if record is None:
            continue
        procs = supervisor.processes(record)
        if procs:
            log(f"{name}: stopping pid {record['pid']} ({len(procs)} process(es))")
            supervisor.terminate(procs, grace)
            left = [p for p in supervisor.processes(record) if supervisor.alive(p)]
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
    record = supervisor.read_pid(config, name)
    if record is None:
        return ServiceStatus(name, "stopped", None, urls[name], log)
    leader = supervisor.leader(record)
    if leader is None:
        return ServiceStatus(name, "dead", int(record["pid"]), urls[name], log)
    state = "running" if supervisor.healthy(health[name]) else "starting"
    return ServiceStatus(name, state, leader.pid, urls[name], log)
