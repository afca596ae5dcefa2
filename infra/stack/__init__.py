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

The modules, each one job: ``config`` (ports, state files, credentials on disk, the client
environment), ``services`` (what each service runs), ``supervisor`` (starting, watching and
stopping one service's processes) and ``control`` (up, down and status of the whole stack),
re-exported here; and ``deploy``, the Prefect side (the result-storage block, work pools and
deployments), imported on its own because it needs Prefect.
"""

from infra.stack.config import (
    DEFAULT_STATE_DIR,
    HOST,
    RESULT_BLOCK,
    RESULT_BLOCK_SLUG,
    SERVICES,
    Credentials,
    StackConfig,
    StackError,
    StackPorts,
    client_env,
    load_config,
    save_config,
    stored_credentials,
    with_ports,
)
from infra.stack.control import ServiceStatus, credentials, down, service_status, status, up
from infra.stack.services import ensure_bucket, services, weed_binary
from infra.stack.supervisor import Service, port_in_use

__all__ = [
    "DEFAULT_STATE_DIR",
    "HOST",
    "RESULT_BLOCK",
    "RESULT_BLOCK_SLUG",
    "SERVICES",
    "Credentials",
    "Service",
    "ServiceStatus",
    "StackConfig",
    "StackError",
    "StackPorts",
    "client_env",
    "credentials",
    "down",
    "ensure_bucket",
    "load_config",
    "port_in_use",
    "save_config",
    "service_status",
    "services",
    "status",
    "stored_credentials",
    "up",
    "weed_binary",
    "with_ports",
]
