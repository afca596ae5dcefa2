"""`eto stack`: idempotent start, status, a taken port named clearly, bucket and result block."""

from __future__ import annotations

import time
from pathlib import Path

import boto3
import pytest

from infra import stack as S
from infra.stack import supervisor
from tests.integration.conftest import Stack, clean_env, eto

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _pids(stack: Stack) -> dict[str, int | None]:
    return {st.name: st.pid for st in S.status(stack.config)}


def test_up_again_reuses_the_running_services(stack: Stack) -> None:
    before = _pids(stack)
    again = eto("stack", "up", "--state-dir", str(stack.state_dir), env=clean_env())
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already running") == 3
    assert _pids(stack) == before
    status = eto("stack", "status", "--state-dir", str(stack.state_dir), env=clean_env())
    assert status.returncode == 0 and status.stdout.count(" running ") == 3


def test_a_taken_port_names_the_service_port_and_option(stack: Stack, tmp_path: Path) -> None:
    started = time.perf_counter()
    other = tmp_path / "other"
    taken = stack.config.ports.s3
    out = eto("stack", "up", "--state-dir", str(other), "--s3-port", str(taken), env=clean_env())
    assert out.returncode == 1
    assert f"s3: port {taken} (s3)" in out.stderr and "already in use" in out.stderr and "--s3-port" in out.stderr
    assert not list((other / "run").glob("*.json")), "nothing may be started"
    assert time.perf_counter() - started < 60


def test_bucket_and_result_storage_block_exist(stack: Stack) -> None:
    s3 = boto3.client("s3", endpoint_url=stack.config.s3_endpoint_url, region_name=stack.config.region,
                      aws_access_key_id=stack.env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=stack.env["AWS_SECRET_ACCESS_KEY"])
    assert stack.config.bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.config.prefect_api_url}), \
            get_client(sync_client=True) as client:
        block = client.read_block_document_by_name(S.RESULT_BLOCK, "s3-bucket")
    assert block.data["bucket_name"] == stack.config.bucket
    # no secret in the block: workers take the keys from their environment
    assert not block.data["credentials"].get("aws_secret_access_key")


def test_prefect_ui_calls_the_stack_api(stack: Stack) -> None:
    """The UI must call the API on the stack's port, not Prefect's default 4200."""
    import json
    import urllib.request

    base = stack.config.prefect_api_url.removesuffix("/api")
    with urllib.request.urlopen(f"{base}/ui-settings", timeout=10) as resp:
        assert json.loads(resp.read())["api_url"] == stack.config.prefect_api_url


def test_services_listen_on_loopback_only(stack: Stack) -> None:
    import psutil

    pids: set[int] = set()
    for name in S.SERVICES:
        record = supervisor.read_pid(stack.config, name)
        assert record is not None
        pids |= {p.pid for p in supervisor.processes(record)}
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert listening and all(c.laddr.ip == S.HOST for c in listening), listening
