"""The stack's configuration and its files: ports, bucket, the state directory's layout, the S3
credentials on disk, and the environment that points a client at the stack.

The files live under the state directory (see ``infra.stack``); each is written atomically, the
credentials with mode 0600.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

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
    atomic_write(config.path("stack.json"), json.dumps(raw, indent=1))


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


def with_ports(config: StackConfig, **ports: int | None) -> StackConfig:
    """``config`` with the given ports changed (None keeps a port)."""
    changes = {k: v for k, v in ports.items() if v is not None}
    return replace(config, ports=replace(config.ports, **changes)) if changes else config


def atomic_write(path: Path, text: str, private: bool = False) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a reader never sees half a file;
    ``private``: mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
