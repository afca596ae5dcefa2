"""``eto models``: inspect the versions of a registered model (aliases, tags, metrics)."""

from __future__ import annotations

import argparse
import os
import sys

from infra.runtime_env import RUNTIME_DEFAULTS


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The ``models`` subcommand and its ``compare``."""
    models = sub.add_parser("models", help="inspect registered models")
    commands = models.add_subparsers(dest="models_command", required=True)
    compare = commands.add_parser(
        "compare", help="a table across the versions of a registered model: aliases, tags, metrics",
    )
    compare.add_argument("name", nargs="?", help="registered model name (default: the one of --config's recipe)")
    compare.add_argument("--config", "-c", default="recipes/default.yaml",
                         help="recipe whose registered model to show when no name is given (default: %(default)s)")
    compare.add_argument("--mlflow-uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else the recipe's)")


def run(args: argparse.Namespace) -> int:
    """``eto models compare``: its exit code (2: no such model or tracking server)."""
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
