"""Process-environment defaults of the ``eto`` commands: telemetry off, an offline hub, a Prefect
server start-up timeout that holds on 2 cores, Prefect's state under a pipeline command's state
directory. Set before Prefect, MLflow or transformers is imported, which read them once then;
anything the user already set wins.
"""

from __future__ import annotations

import os
from pathlib import Path

RUNTIME_DEFAULTS = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def set_runtime_defaults(state_dir: str) -> None:
    """Environment defaults; anything the user already set wins."""
    for key, value in RUNTIME_DEFAULTS.items():
        os.environ.setdefault(key, value)
    state = Path(state_dir).resolve()
    # Prefect creates its home without parents and then fails to open its database.
    (state / "prefect" / "storage").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(state / "prefect" / "storage"))
