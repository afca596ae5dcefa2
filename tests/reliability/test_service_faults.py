"""Services that die mid-run: the S3 server and the MLflow tracking server, for real.

Each test starts its own SeaweedFS and MLflow server (infra.stack, loopback, free ports),
starts `eto run` on the mini recipe against them, stops one service while SFT trains, and
checks that the run stops after bounded retries with one error that names the setting to fix;
then it starts the service again on the same data and reruns the same command, which completes
and reuses what had finished before the outage.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from infra import stack as S
from infra.stack import supervisor
from tests.integration.conftest import clean_env, free_port, free_weed_base
from tests.reliability.cli_runs import bar_at, run, subprocess_env
from tests.reliability.conftest import ROWS

pytestmark = pytest.mark.slow

# Retries are bounded: S3 3 attempts with 3 s connect timeouts, MLflow 4 retries with backoff 1.
GIVE_UP_SECONDS = 90


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[S.StackConfig, S.Credentials]]:
    ports = S.StackPorts(s3=free_port(), mlflow=free_port(), prefect=free_port(), weed_base=free_weed_base())
    config = S.StackConfig(state_dir=tmp_path / "stack", ports=ports)
    creds = S.credentials(config)
    S.up(config, creds, clean_env(), log=lambda _: None, names=("s3", "mlflow"))
    try:
        yield config, creds
    finally:
        S.down(config, log=lambda _: None, names=("s3", "mlflow"))


def _env(config: S.StackConfig, creds: S.Credentials) -> dict[str, str]:
    return {**subprocess_env(), "AWS_ACCESS_KEY_ID": creds.access_key, "AWS_SECRET_ACCESS_KEY": creds.secret_key,
            "AWS_DEFAULT_REGION": config.region}


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _stop_during_sft(config: S.StackConfig, name: str, work: Path, args: list[str],
                     env: dict[str, str]) -> tuple[str, float]:
    """Run the command, stop service ``name`` once SFT shows progress, and let the run stop by
    itself; its one error line and the seconds it kept retrying."""
    stopped_at: list[float] = []

    def stop(output: str, _root: Path) -> bool:
        if not stopped_at and bar_at(output, "SFT", 2):
            S.down(config, log=lambda _: None, names=(name,))
            assert S.service_status(config, name).state == "stopped"
            stopped_at.append(time.monotonic())
        return False  # never kill the run: it must stop by itself

    outage = run(work, stop, extra=args, env=env)
    assert stopped_at, "SFT never showed progress"
    gave_up = time.monotonic() - stopped_at[0]
    errors = _errors(outage.output)
    assert outage.returncode == 2 and len(errors) == 1, outage.output[-4000:]
    assert gave_up < GIVE_UP_SECONDS
    return errors[0], gave_up


def test_s3_outage_mid_run_stops_with_a_clear_error_and_the_rerun_resumes(
    services: tuple[S.StackConfig, S.Credentials], tmp_path: Path
) -> None:
    config, creds = services
    env = _env(config, creds)
    args = ["--artifact-root", config.artifact_root, "--set", f"storage.s3_endpoint_url={config.s3_endpoint_url}"]
    error, gave_up = _stop_during_sft(config, "s3", tmp_path / "run", args, env)
    assert "cannot reach the S3 endpoint" in error
    assert config.s3_endpoint_url in error and "storage.s3_endpoint_url" in error

    S.up(config, creds, clean_env(), log=lambda _: None, names=("s3",))
    s3 = boto3.client("s3", endpoint_url=config.s3_endpoint_url, region_name=config.region,
                      aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key)
    listed = s3.list_objects_v2(Bucket=config.bucket, Prefix="artifacts/")["Contents"]
    before = {o["Key"]: o["LastModified"] for o in listed if o["Key"].endswith("/manifest.json")}
    assert {k.split("/")[1] for k in before} == {"expert", "model_init"}  # finished before the outage

    again = run(tmp_path / "run", None, extra=args, env=env)
    assert again.returncode == 0, again.output[-4000:]
    after = {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=config.bucket, Prefix="artifacts/")["Contents"]}
    assert all(after[k] == v for k, v in before.items())  # reused, not uploaded again
    assert {k.split("/")[1] for k in after if k.endswith("/manifest.json")} >= {"sft", "dpo", "evaluate"}
    ROWS.append({"area": "service faults", "test": "s3 outage",
                 "fault": "SeaweedFS (the S3 artifact store) stopped while SFT trains",
                 "error": f"{error} (after {gave_up:.0f} s of retries); after the server came back the same "
                          "command completed, reusing the expert and model_init artifacts already in the bucket",
                 "lost": "the SFT stage in flight; nothing in the bucket"})


def test_mlflow_outage_mid_run_stops_with_a_clear_error_and_the_rerun_resumes(
    services: tuple[S.StackConfig, S.Credentials], tmp_path: Path
) -> None:
    config, creds = services
    env = _env(config, creds)
    args = ["--mlflow-uri", config.mlflow_uri]
    error, gave_up = _stop_during_sft(config, "mlflow", tmp_path / "run", args, env)
    assert "stopped answering during the run" in error
    assert config.mlflow_uri in error and "tracking.mlflow_uri" in error
    assert (tmp_path / "run" / "artifacts" / "sft").is_dir()  # SFT published before it tried to log

    S.up(config, creds, clean_env(), log=lambda _: None, names=("mlflow",))
    again = run(tmp_path / "run", None, extra=args, env=env)
    assert again.returncode == 0, again.output[-4000:]
    from mlflow import MlflowClient

    client = MlflowClient(config.mlflow_uri)
    versions = client.search_model_versions("name='eto-mini'")
    # The SFT model the outage kept out of MLflow was logged and registered by the rerun.
    assert {v.tags.get("stage") for v in versions} == {"sft", "dpo"}
    ROWS.append({"area": "service faults", "test": "mlflow outage",
                 "fault": "the MLflow tracking server stopped while SFT trains",
                 "error": f"{error} (after {gave_up:.0f} s of retries); after the server came back the same "
                          "command completed, reused the published SFT model and logged and registered it then",
                 "lost": "nothing: the stage finished and was published before the outage stopped the run"})


def test_credentials_never_reach_logs_mlflow_params_or_prefect_parameters(
    services: tuple[S.StackConfig, S.Credentials], tmp_path: Path
) -> None:
    config, creds = services
    env = _env(config, creds)
    done = run(tmp_path / "run", None, env=env,
               extra=["--artifact-root", config.artifact_root, "--set",
                      f"storage.s3_endpoint_url={config.s3_endpoint_url}", "--mlflow-uri", config.mlflow_uri])
    assert done.returncode == 0, done.output[-4000:]
    secrets_ = (creds.access_key, creds.secret_key)
    places = {"the command's output": done.output}
    from mlflow import MlflowClient

    client = MlflowClient(config.mlflow_uri)
    for run_info in client.search_runs([e.experiment_id for e in client.search_experiments()]):
        places[f"MLflow run {run_info.info.run_id}"] = repr((run_info.data.params, run_info.data.tags))
    prefect_db = tmp_path / "run" / "state" / "prefect" / "prefect.db"
    places["the Prefect database (flow run parameters, logs)"] = prefect_db.read_bytes().decode("latin-1")
    for where, text in places.items():
        for secret in secrets_:
            assert secret not in text, f"a credential appears in {where}"
    # Every socket the services listen on is bound to the loopback address.
    listening = []
    for name in ("s3", "mlflow"):
        record = supervisor.read_pid(config, name)
        assert record is not None
        for proc in supervisor.processes(record):
            listening += [(name, c.laddr) for c in proc.net_connections(kind="inet") if c.status == "LISTEN"]
    assert listening and all(addr.ip == "127.0.0.1" for _, addr in listening), listening
    ROWS.append({"area": "security", "test": "credentials",
                 "fault": "a run on S3 + the MLflow server with known (random) credentials in the environment",
                 "error": f"neither key appears in the run's output, {len(places) - 2} MLflow runs' params and "
                          f"tags, nor the Prefect database (parameters, logs); the {len(listening)} listening "
                          "sockets of SeaweedFS and MLflow are all bound to 127.0.0.1",
                 "lost": "nothing"})
