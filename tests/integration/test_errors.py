"""A misconfigured service fails `eto run` in seconds with one error that names what to fix."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flows.cli import main
from tests.integration.conftest import Stack, free_port

pytestmark = pytest.mark.integration

# Clearly fake keys: the tests only need keys that a server rejects or never sees.
FAKE_KEY, FAKE_SECRET = "eto-test-not-a-key", "eto-test-not-a-secret"


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, float]:
    started = time.perf_counter()
    code = main(["run", "--config", "recipes/mini.yaml", *args])
    return code, capsys.readouterr().err, time.perf_counter() - started


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_wrong_s3_credentials_name_the_variables(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", stack.env["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    code, err, seconds = _run(["--artifact-root", stack.config.artifact_root,
                               "--set", f"storage.s3_endpoint_url={stack.config.s3_endpoint_url}",
                               "--state-dir", str(tmp_path)], capsys)
    assert code == 2 and len(_errors(err)) == 1, err
    assert "rejected the credentials" in err and "AWS_ACCESS_KEY_ID" in err and "AWS_SECRET_ACCESS_KEY" in err
    assert seconds < 30


def test_unreachable_s3_endpoint_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, err, seconds = _run(["--artifact-root", "s3://eto/artifacts", "--set", f"storage.s3_endpoint_url={endpoint}",
                               "--state-dir", str(tmp_path)], capsys)
    assert code == 2 and len(_errors(err)) == 1, err
    assert "cannot reach the S3 endpoint" in err and endpoint in err and "storage.s3_endpoint_url" in err
    assert seconds < 30


def test_unreachable_mlflow_server_names_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    code, err, seconds = _run(["--artifact-root", str(tmp_path / "artifacts"), "--mlflow-uri", uri,
                               "--state-dir", str(tmp_path)], capsys)
    assert code == 2 and len(_errors(err)) == 1, err
    assert "cannot reach the MLflow tracking server" in err and uri in err and "tracking.mlflow_uri" in err
    assert seconds < 30


def test_the_flow_itself_checks_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment does not pass through the CLI: the store's own check names the setting too."""
    from eto_core.storage import ArtifactError, ArtifactStore

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    store = ArtifactStore("s3://eto/artifacts", s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ArtifactError, match="storage.s3_endpoint_url"):
        store.check()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    no_keys = ArtifactStore("s3://eto/artifacts", s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ArtifactError, match="AWS_ACCESS_KEY_ID"):
        no_keys.check()
