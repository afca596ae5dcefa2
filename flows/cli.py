"""``eto``: run the ETO pipeline and its helpers from the command line.

Arguments are parsed here, at the edge, into one validated Recipe that is passed inward.
Runtime defaults (telemetry off, offline hub, Prefect state under the project's state dir,
a Prefect server start-up timeout that holds on 2 cores; ``infra.runtime_env``) are set before
Prefect is imported.

The flow commands (run, evaluate, baseline, compare) and the recipe and environment listings
live here; the commands that are not flows (import-eto, data, stack, models, serve) live in
``infra.cli_*`` and are registered and dispatched here, so ``eto --help`` lists them all.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from infra import cli_data, cli_models, cli_serve, cli_stack
from infra.runtime_env import set_runtime_defaults

PIPELINE_COMMANDS = ("run", "evaluate", "baseline", "compare")
"""The commands whose --state-dir holds Prefect's state (``stack`` has its own layout)."""


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
        "row's per-task reward difference from its seed's SFT with a bootstrap 95% interval, and its steps "
        "against SFT's on the tasks both solved; the zero-shot base model is a row where it was evaluated), "
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
    cli_data.add_parsers(sub)
    cli_stack.add_parser(sub)
    cli_models.add_parser(sub)
    cli_serve.add_parser(sub)
    return parser


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
    if result.get("stage_seconds"):
        from flows.stage_clock import seconds_table

        print(f"\nWall time by stage:\n\n{seconds_table(result['stage_seconds'])}")
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
        from infra.lifecycle import stop_in_chain

        if stop_in_chain(exc) is not None:
            raise  # a stop that library code turned into an error: main exits as stopped
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
    from eto_core.stopping import StopRequested
    from infra.lifecycle import ChildWatchdog, Interrupted, stop_in_chain, stop_on_signals

    # `kill -USR1 <pid>` prints every thread's stack to stderr and the command goes on: where a
    # run that seems stuck (or slow to stop) is waiting, without a debugger.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Started first, so it sees every child from the first one on.
    watchdog = ChildWatchdog()
    if args.command in PIPELINE_COMMANDS and not os.environ.get("PREFECT_API_URL"):
        _temporary_server_in_own_session()
    received: list[int] = []
    try:
        with stop_on_signals() as received:
            code = _dispatch(args, watchdog)
    except Interrupted as exc:
        # Our handler records the signal before it raises; a flow raises one for a stop that
        # reached Prefect's handler instead (infra.lifecycle.hidden_stop).
        if not received:
            received.append(exc.signum)
    except (Exception, StopRequested) as exc:
        # StopRequested (a BaseException): a rollout shard on a worker thread saw the stop our
        # handler requested and unwound; when Prefect's task engine took the handler's
        # Interrupted in the main thread, the shard's is what the flow re-raises from its future.
        if not received:
            if (signum := stop_in_chain(exc)) is None:
                raise
            received.append(signum)
    else:
        if not received:
            return code
    # A stop signal arrived. Prefect may have caught it mid-start and reported an error of its own
    # (returned or raised): the command still exits as stopped.
    stopped = Interrupted(received[0])
    resume = " Finished stages are kept: the same command resumes from them." if args.command in PIPELINE_COMMANDS else ""
    print(f"eto {args.command}: {stopped}.{resume}", file=sys.stderr)
    return stopped.exit_code


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
        return cli_data.run_import(args)
    if args.command == "data":
        return cli_data.run_data(args)
    if args.command == "stack":
        return cli_stack.run(args, watchdog)
    if args.command == "models":
        return cli_models.run(args)
    if args.command == "serve":
        return cli_serve.run(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
