"""``eto stack``: start, stop and inspect the local production stack (``infra.stack``), print the
settings that point a shell at it, and register the Prefect deployments with it."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from infra.runtime_env import RUNTIME_DEFAULTS


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The ``stack`` subcommand and its ``up``, ``down``, ``status``, ``env`` and ``deploy``."""
    from infra.stack import DEFAULT_STATE_DIR

    stack = sub.add_parser(
        "stack",
        help="the local production stack: S3 (SeaweedFS), an MLflow server and a Prefect server",
        description="Start, stop and inspect the local production stack, every service bound to 127.0.0.1 with "
        "its data, logs and pid files under one state directory.",
    )
    commands = stack.add_subparsers(dest="stack_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=os.environ.get("ETO_STACK_DIR", DEFAULT_STATE_DIR),
                        help="the stack's state directory (default: $ETO_STACK_DIR or %(default)s)")
    up = commands.add_parser(
        "up", parents=[common], help="start every service that is not running and wait until healthy",
        description="Start SeaweedFS (`weed mini`), an MLflow tracking server (SQLite, artifacts proxied to the "
        "bucket) and a Prefect server; create the bucket and the Prefect result-storage block. Idempotent. "
        "S3 credentials: ETO_S3_ACCESS_KEY / ETO_S3_SECRET_KEY, else generated once into the state directory. "
        "Ports given here are remembered in the state directory.",
    )
    up.add_argument("--s3-port", type=int, help="S3 endpoint port (default 8333)")
    up.add_argument("--mlflow-port", type=int, help="MLflow server port (default 5000)")
    up.add_argument("--prefect-port", type=int, help="Prefect server port (default 4200)")
    up.add_argument("--weed-port-base", type=int,
                    help="first of SeaweedFS's 8 internal ports (base..base+7, and base+10007; default 9330)")
    up.add_argument("--bucket", help="bucket for artifacts, MLflow artifacts and Prefect results (default eto)")
    up.add_argument("--timeout", type=float, default=180.0,
                    help="seconds each service may take to become healthy (default: %(default)s)")
    commands.add_parser("down", parents=[common], help="stop every service and all their processes")
    commands.add_parser("status", parents=[common], help="each service's state, pid, URL and log file "
                        "(exit code 3 unless all are running)")
    commands.add_parser("env", parents=[common],
                        help='print the settings that point a shell at the stack: eval "$(eto stack env)"')
    deploy = commands.add_parser(
        "deploy", parents=[common], help="register the Prefect deployments with the running stack",
        description="Create the work pools that the prefect file lists under definitions.work_pools, then run "
        "`prefect deploy --all` on it with the stack's settings in the environment (they fill its {{ $VAR }} "
        "placeholders). Run from the repository root: entrypoints are relative to it.",
    )
    deploy.add_argument("--prefect-file", default="deployments/prefect.yaml", help="default: %(default)s")


def _stack_config(args: argparse.Namespace) -> Any:
    from infra import stack as S

    state = Path(args.state_dir).resolve()
    config = S.load_config(state) or S.StackConfig(state_dir=state)
    if args.stack_command == "up":
        config = S.with_ports(config, s3=args.s3_port, mlflow=args.mlflow_port, prefect=args.prefect_port,
                              weed_base=args.weed_port_base)
        config = replace(config, bucket=args.bucket or config.bucket, start_timeout=args.timeout)
    return config


def run(args: argparse.Namespace, watchdog: Any = None) -> int:
    """Run one ``eto stack`` subcommand; its exit code. ``watchdog`` (``stack up`` under
    supervision) is released once the services are up, so they outlive the command."""
    from infra import stack as S

    for key, value in RUNTIME_DEFAULTS.items():
        os.environ.setdefault(key, value)
    config = _stack_config(args)
    try:
        if args.stack_command == "up":
            return _stack_up(config, watchdog)
        if args.stack_command == "down":
            S.down(config)
            print(f"stack in {config.state_dir} stopped")
            return 0
        if args.stack_command == "status":
            rows = S.status(config)
            for st in rows:
                pid = st.pid if st.pid is not None else "-"
                print(f"{st.name:8} {st.state:9} pid {pid!s:8} {st.url:28} log {st.log}")
            return 0 if all(st.state == "running" for st in rows) else 3
        creds = S.stored_credentials(config)
        if creds is None:
            print(f"error: no stack in {config.state_dir}: run `eto stack up` first", file=sys.stderr)
            return 2
        env = S.client_env(config, creds)
        if args.stack_command == "env":
            import shlex

            print(f"# the stack in {config.state_dir}; then run the pipeline on it with:")
            print('#   eto run --config recipes/mini.yaml --artifact-root "$ETO_ARTIFACT_ROOT" '
                  '--set storage.s3_endpoint_url="$ETO_S3_ENDPOINT_URL" --mlflow-uri "$MLFLOW_TRACKING_URI"')
            for key, value in env.items():
                print(f"export {key}={shlex.quote(value)}")
            return 0
        return _stack_deploy(config, env, Path(args.prefect_file))
    except S.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _stack_up(config: Any, watchdog: Any = None) -> int:
    """Start the stack. Stopped by a signal, it stops the services it started; done, or failed on
    a service's error (left running to be inspected, as the message says), it leaves them running."""
    from infra import stack as S
    from infra.lifecycle import Interrupted

    given = None
    key, secret = os.environ.get("ETO_S3_ACCESS_KEY"), os.environ.get("ETO_S3_SECRET_KEY")
    if bool(key) != bool(secret):
        print("error: set both ETO_S3_ACCESS_KEY and ETO_S3_SECRET_KEY, or neither", file=sys.stderr)
        return 2
    if key and secret:
        given = S.Credentials(key, secret)
    creds = S.credentials(config, given)
    ours = [st.name for st in S.status(config) if st.state not in ("running", "starting")]
    try:
        S.up(config, creds, dict(os.environ))
    except Interrupted:
        S.down(config, names=ours)
        raise
    except S.StackError:
        if watchdog is not None:
            watchdog.release()
        raise
    if watchdog is not None:
        watchdog.release()
    # Prefect keeps client files in its home: the stack's, not the user's ~/.prefect.
    os.environ.setdefault("PREFECT_HOME", str(config.path("prefect")))
    from infra.stack.deploy import save_result_storage

    slug = save_result_storage(config.prefect_api_url, bucket=config.bucket, endpoint_url=config.s3_endpoint_url,
                               region=config.region)
    print(f"prefect: result storage block {slug} -> s3://{config.bucket}/prefect-results")
    print(f"stack up in {config.state_dir}:\n  S3       {config.s3_endpoint_url} (bucket {config.bucket})\n"
          f"  MLflow   {config.mlflow_uri}\n  Prefect  {config.prefect_api_url.removesuffix('/api')}\n"
          'point a shell at it with: eval "$(eto stack env)"')
    return 0


def _stack_deploy(config: Any, env: dict[str, str], prefect_file: Path) -> int:
    from infra import stack as S

    down = [st.name for st in S.status(config) if st.state != "running"]
    if down:
        print(f"error: stack services not running: {', '.join(down)}; run `eto stack up` first", file=sys.stderr)
        return 2
    if not prefect_file.is_file():
        print(f"error: {prefect_file}: not found; run from the repository root or pass --prefect-file",
              file=sys.stderr)
        return 2
    os.environ.setdefault("PREFECT_HOME", str(config.path("prefect")))
    from infra.stack.deploy import deploy_all, ensure_work_pools, work_pools

    for name in ensure_work_pools(config.prefect_api_url, work_pools(prefect_file)):
        print(f"created work pool {name}")
    return deploy_all(prefect_file, env, Path.cwd())
