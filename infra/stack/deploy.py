"""Prefect-side set-up of the production stack: the S3 result-storage block, the work pools and
the deployments of ``deployments/prefect.yaml``.

Each function takes the Prefect API URL explicitly and applies it with ``temporary_settings``,
because Prefect reads its settings once at import and the caller may have imported it already.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from infra.stack.config import RESULT_BLOCK, StackError

RESULTS_FOLDER = "prefect-results"


def save_result_storage(api_url: str, *, bucket: str, endpoint_url: str, region: str) -> str:
    """Save the S3Bucket block that holds task results and cache records; returns its slug.

    The block carries no keys: boto3 reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the
    environment of whoever runs a flow (``eto stack env``), like the artifact store does.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket
    except ImportError:
        raise StackError("prefect-aws is not installed (Prefect's S3 result storage): pip install prefect-aws") from None

    credentials = AwsCredentials(region_name=region, aws_client_parameters=AwsClientParameters(endpoint_url=endpoint_url))
    block = S3Bucket(bucket_name=bucket, bucket_folder=RESULTS_FOLDER, credentials=credentials)
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        block.save(RESULT_BLOCK, overwrite=True)
    return f"s3-bucket/{RESULT_BLOCK}"


def work_pools(prefect_file: Path) -> list[dict[str, Any]]:
    """The work pools a prefect.yaml declares under ``definitions.work_pools``."""
    raw = yaml.safe_load(prefect_file.read_text()) or {}
    return list((raw.get("definitions") or {}).get("work_pools") or [])


def ensure_work_pools(api_url: str, pools: Sequence[Mapping[str, Any]]) -> list[str]:
    """Create each pool that does not exist yet (``prefect deploy`` refuses unknown pools)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.base import BaseWorker

    created = []
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        for pool in pools:
            try:
                client.read_work_pool(pool["name"])
                continue
            except ObjectNotFound:
                pass
            worker = BaseWorker.get_worker_class_from_type(pool["type"])
            if worker is None:
                raise ValueError(f"work pool {pool['name']!r}: no installed worker of type {pool['type']!r}")
            client.create_work_pool(WorkPoolCreate(
                name=pool["name"], type=pool["type"], description=pool.get("description"),
                base_job_template=worker.get_default_base_job_template(),
            ))
            created.append(str(pool["name"]))
    return created


def deploy_all(prefect_file: Path, env: Mapping[str, str], cwd: Path) -> int:
    """``prefect deploy --all`` on ``prefect_file`` from ``cwd`` (entrypoints are relative to it);
    ``env`` fills the file's ``{{ $VAR }}`` placeholders. Returns the exit code."""
    argv = [sys.executable, "-m", "prefect", "deploy", "--no-prompt", "--prefect-file", str(prefect_file), "--all"]
    return subprocess.run(argv, env={**os.environ, **env}, cwd=cwd, check=False).returncode
