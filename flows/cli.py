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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eto",
        description="ETO (Exploration-based Trajectory Optimization) for LLM agents as a tracked, cached Prefect pipeline.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run the whole pipeline: SFT, then N ETO iterations, evaluated on seen/unseen",
        description="Run SFT + N ETO iterations (explore -> pairs -> DPO -> eval) as one Prefect flow run. "
        "Finished stages are reused from cache; MLflow gets one parent run with a nested run per stage.",
    )
    run.add_argument("--config", "-c", default="recipes/default.yaml",
                     help="recipe YAML (default: %(default)s); `eto recipe-help` lists every field")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a recipe field, e.g. --set iterations=3 --set dpo.beta=0.2 (repeatable)")
    run.add_argument("--iterations", type=int, help="shortcut for --set iterations=N")
    run.add_argument("--seed", type=int, help="shortcut for --set seed=N")
    run.add_argument("--artifact-root", help="shortcut for --set storage.root=URI (local path, file:// or s3://)")
    run.add_argument("--mlflow-uri", help="shortcut for --set tracking.mlflow_uri=URI")
    run.add_argument("--state-dir", default=".eto",
                     help="local state: Prefect database and results, artifact cache (default: %(default)s)")
    run.add_argument("--json", dest="json_out", help="also write the results (summaries, run ids) to this JSON file")

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
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    set_runtime_defaults(args.state_dir)
    from eto_core.config import RecipeError, load_recipe

    overrides = list(args.overrides)
    for flag, key in (("iterations", "iterations"), ("seed", "seed"), ("artifact_root", "storage.root"),
                      ("mlflow_uri", "tracking.mlflow_uri")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        recipe = load_recipe(args.config, overrides)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from flows.pipeline import eto_pipeline

    started = time.perf_counter()
    result = eto_pipeline(recipe, state_dir=args.state_dir)
    elapsed = time.perf_counter() - started
    print(f"\nETO results for recipe '{recipe.name}' on '{recipe.env.name}' ({elapsed:.1f} s):\n")
    print(result["table"])
    print(f"\nMLflow run {result['mlflow_run_id']} at {recipe.tracking.mlflow_uri} "
          f"(browse with: mlflow ui --backend-store-uri {recipe.tracking.mlflow_uri})")
    if args.json_out:
        import json

        result["wall_seconds"] = elapsed
        Path(args.json_out).write_text(json.dumps(result, indent=1, default=str))
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _cmd_run(args)
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
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
